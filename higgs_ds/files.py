"""Local files and URLs: one atomic write for every writer, and shard sets opened by path or fsspec URL."""

from __future__ import annotations

import errno
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
    try:
        tmp.write_bytes(data.encode() if isinstance(data, str) else data)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise OSError(e.errno, e.strerror, str(path)) from None  # the path the caller knows, not the temp name
    os.replace(tmp, path)


def out_of_space(directory: str | Path) -> bool:
    """Whether DIRECTORY takes no more data: asked by writing 1 MiB, for writers whose errors carry no errno."""
    probe = temp_path(Path(directory) / "space-probe")
    try:
        with open(probe, "wb") as f:
            f.write(bytes(1 << 20))
            f.flush()
            os.fsync(f.fileno())
        return False
    except OSError as e:
        return e.errno in (errno.ENOSPC, errno.EDQUOT)
    finally:
        probe.unlink(missing_ok=True)


def no_space(error: BaseException) -> bool:
    """True for a full disk or quota, however the writer reported it (torch.save raises a RuntimeError)."""
    while error is not None:
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        error = error.__cause__ or error.__context__
    return False


def is_url(path: str | Path) -> bool:
    return "://" in str(path)


def open_binary(path: str | Path):
    """A seekable binary file for a local path or an fsspec URL (s3://, gs://, http(s)://, file://); no shell."""
    if is_url(path):
        import fsspec

        return fsspec.open(str(path), "rb").open()
    return open(path, "rb")


def read_span(path: str | Path, start: int, size: int) -> bytes:
    """SIZE bytes from byte START of a local file or an fsspec URL (a ranged read: nothing else is fetched)."""
    if is_url(path):
        import fsspec

        fs, p = fsspec.core.url_to_fs(str(path))
        return fs.cat_file(p, start=start, end=start + size)
    with open(path, "rb") as f:
        f.seek(start)
        return f.read(size)


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
