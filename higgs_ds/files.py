"""Local files and URLs: one atomic write for every writer, and shard sets opened by path or fsspec URL."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def temp_path(path: str | Path) -> Path:
    """Where PATH is written before it is renamed into place (a killed writer leaves only this hidden file)."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


def atomic_write(path: str | Path, data: bytes | str) -> None:
    """PATH holds either its old content or all of DATA, never part: written beside it, then renamed over it."""
    tmp = temp_path(path)
    tmp.write_bytes(data.encode() if isinstance(data, str) else data)
    os.replace(tmp, path)


def is_url(path: str | Path) -> bool:
    return "://" in str(path)


def open_binary(path: str | Path):
    """A seekable binary file for a local path or an fsspec URL (s3://, gs://, http(s)://, file://); no shell."""
    if is_url(path):
        import fsspec

        return fsspec.open(str(path), "rb").open()
    return open(path, "rb")


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
