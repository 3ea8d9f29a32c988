"""A checkpoint converted once between boson_multimodal's layout and the transformers-native one, into a cache keyed
by its hub commit or by its content: a native checkpoint to boson's layout for the boson engine (and boson's serve
engine), a boson-layout model to the native layout for the native engine.

$HIGGS_DS_CACHE/converted/<key>/   the converted copy, and SOURCE.json: what it was converted from, and when
$HIGGS_DS_CACHE/converted/by-stat/ the content key of a local directory by its files' sizes and mtimes, so the
                                   content is hashed once per version of the directory, not at every use
$HIGGS_DS_CACHE/converted/locks/   one lock a key: of the ranks that start together, one converts
HIGGS_DS_CACHE defaults to ~/.cache/higgs-ds.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import time
from pathlib import Path

from higgs_ds.files import atomic_write, file_sha256

log = logging.getLogger(__name__)
CONVERTER_VERSION = 1  # bump when what a conversion writes changes: older copies are then made again
# transformers 5 names the fast tokenizer class TokenizersBackend; transformers 4.x calls it PreTrainedTokenizerFast
_V5_TOKENIZER_CLASSES = {"TokenizersBackend": "PreTrainedTokenizerFast"}
_V5_TOKENIZER_KEYS = ("backend", "is_local", "local_files_only")


def cache_root() -> Path:
    return Path(os.environ.get("HIGGS_DS_CACHE") or Path.home() / ".cache" / "higgs-ds") / "converted"


def _content_key(path: Path) -> str:
    """sha256 over every file of PATH (names and bytes), remembered under a key of their sizes and mtimes."""
    files = sorted(f for f in path.rglob("*") if f.is_file())
    stat = hashlib.sha256()
    for f in files:
        st = f.stat()
        stat.update(f"{f.relative_to(path)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    memo = cache_root() / "by-stat" / stat.hexdigest()[:32]
    if memo.is_file():
        return memo.read_text().strip()
    content = hashlib.sha256()
    for f in files:
        content.update(f"{f.relative_to(path)}\0{file_sha256(f)}\n".encode())
    key = content.hexdigest()[:32]
    memo.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(memo, key)
    return key


def conversion_key(kind: str, path: Path, repo_id: str | None, commit: str | None) -> str:
    source = f"{repo_id}@{commit}" if repo_id and commit else f"dir:{_content_key(path)}"
    return hashlib.sha256(f"{kind}\0{source}\0v{CONVERTER_VERSION}".encode()).hexdigest()[:24]


@contextlib.contextmanager
def _locked(path: Path):
    """An exclusive lock on PATH (every rank of a job may convert the same checkpoint at once: one does it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def to_boson(kind: str, path: Path, spec: str, repo_id: str | None = None, commit: str | None = None) -> Path:
    """The boson-layout copy of the native checkpoint of KIND in PATH, converted now if the cache lacks it."""
    return _converted(conversion_key(kind, path, repo_id, commit), spec, kind, "native", "boson_multimodal's",
                      lambda out: convert(kind, path, out), repo_id, commit, path)


def to_native(path: Path, spec: str, tokenizer_dir: Path, repo_id: str | None = None,
              commit: str | None = None) -> Path:
    """The native copy of the boson-layout model in PATH (with the text tokenizer in TOKENIZER_DIR, whose ids of
    the audio tokens the native config names), converted now if the cache lacks it."""
    from higgs_ds.checkpoints.native import boson_to_native

    tokenizer_key = _content_key(Path(tokenizer_dir)) if Path(tokenizer_dir) != Path(path) else "same"
    key = conversion_key(f"model->native\0tokenizer:{tokenizer_key}", path, repo_id, commit)
    return _converted(key, spec, "model", "boson", "the transformers-native one",
                      lambda out: boson_to_native(path, out, tokenizer_dir), repo_id, commit, path)


def _converted(key: str, spec: str, kind: str, layout: str, target: str, write, repo_id, commit, path) -> Path:
    out = cache_root() / key
    if (out / "SOURCE.json").is_file():
        return out
    with _locked(cache_root() / "locks" / f"{key}.lock"):
        if (out / "SOURCE.json").is_file():
            return out
        tmp = cache_root() / f".{key}.tmp{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        start = time.perf_counter()
        log.info(f"converting the {kind.replace('_', ' ')} {spec} from the "
                 f"{'transformers-native' if layout == 'native' else 'boson_multimodal'} layout to {target}, "
                 f"once, into {out}")
        try:
            write(tmp)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        seconds = time.perf_counter() - start
        (tmp / "SOURCE.json").write_text(json.dumps({
            "spec": spec, "kind": kind, "layout": layout, "repo_id": repo_id, "commit": commit,
            "path": str(path), "converter_version": CONVERTER_VERSION, "seconds": round(seconds, 2)}, indent=2))
        os.replace(tmp, out)
        log.info(f"converted {spec} in {seconds:.1f} s")
    return out


def convert(kind: str, src: Path, out: Path) -> None:
    if kind == "model":
        from higgs_ds.checkpoints.native import native_to_boson

        native_to_boson(src, out)
        fix_tokenizer_config(out)
    elif kind == "text_tokenizer":
        from higgs_ds.checkpoints.native import copy_tokenizer

        copy_tokenizer(src, out)
        fix_tokenizer_config(out)
    elif kind == "audio_tokenizer":
        from higgs_ds.checkpoints.native_codec import native_tokenizer_to_boson

        native_tokenizer_to_boson(src, out)
    else:
        raise ValueError(f"no conversion for {kind!r}")


def fix_tokenizer_config(directory: Path) -> None:
    """tokenizer_config.json as transformers 4.x reads it (a transformers 5 save names a class 4.x lacks)."""
    path = directory / "tokenizer_config.json"
    if not path.is_file():
        return
    config = json.loads(path.read_text())
    cls = config.get("tokenizer_class")
    if cls in _V5_TOKENIZER_CLASSES:
        config["tokenizer_class"] = _V5_TOKENIZER_CLASSES[cls]
    for key in _V5_TOKENIZER_KEYS:
        config.pop(key, None)
    path.write_text(json.dumps(config, indent=2))
