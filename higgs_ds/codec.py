"""The Higgs audio tokenizer: load it (local dir or hub id), encode waveforms to (8, T) codes, cache codes by content."""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import numpy as np

from higgs_ds.audio import read_audio


def best_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_dir(name_or_path: str) -> Path:
    """A local directory for a path or hub id (hub ids download once into the Hugging Face cache)."""
    if os.path.exists(name_or_path):
        return Path(name_or_path)
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(name_or_path))


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def load_audio_tokenizer(name_or_path: str, device: str | None = None):
    """boson_multimodal's loader, plus the strict key check it skips (it loads with strict=False)."""
    import torch
    from boson_multimodal.audio_processing.higgs_audio_tokenizer import load_higgs_audio_tokenizer

    path = resolve_dir(name_or_path)
    device = device or best_device()
    try:
        tok = load_higgs_audio_tokenizer(str(path), device=device)
    except OSError as e:
        raise RuntimeError(f"could not build the audio tokenizer from {path}: its semantic model "
                           f"(bosonai/hubert_base) did not load ({e}). Offline, point HF_HOME at a cache that "
                           f"holds it (for the tiny fixtures: HF_HOME=FIXTURES/hf_home HF_HUB_OFFLINE=1).") from e
    state = torch.load(path / "model.pth", map_location="cpu", weights_only=True)
    expected = set(tok.state_dict())
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise RuntimeError(f"audio tokenizer weights {path / 'model.pth'} do not match its config: "
                           f"{len(missing)} missing keys (e.g. {missing[:3]}), {len(unexpected)} unexpected "
                           f"(e.g. {unexpected[:3]})")
    uninit = [n for n, b in tok.named_buffers() if n.endswith(".inited") and not bool(b.all())]
    if uninit:
        raise RuntimeError(f"audio tokenizer {path}: {len(uninit)} codebooks are not initialised (e.g. {uninit[0]}); "
                           f"they would k-means-initialise on the first clip encoded, making codes depend on order")
    return tok


def tokenizer_fingerprint(name_or_path: str) -> str:
    """Content hash of the tokenizer's config and weights: cached codes are valid only for the same tokenizer."""
    path = resolve_dir(name_or_path)
    h = hashlib.sha256()
    for name in ("config.json", "model.pth"):
        h.update(file_sha256(path / name).encode())
    return h.hexdigest()[:16]


class CodeCache:
    """int16 (num_codebooks, T) code arrays keyed by (audio file sha256, tokenizer fingerprint), as .npy files."""

    def __init__(self, root: str | Path, fingerprint: str):
        self.root = Path(root) / fingerprint

    def _path(self, digest: str) -> Path:
        return self.root / digest[:2] / f"{digest}.npy"

    def get(self, digest: str) -> np.ndarray | None:
        p = self._path(digest)
        if not p.is_file():
            return None
        try:
            return np.load(p, allow_pickle=False)
        except (ValueError, OSError, EOFError):
            return None  # a torn write from a killed build: encode again

    def put(self, digest: str, codes: np.ndarray) -> None:
        p = self._path(digest)
        p.parent.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        np.save(buf, codes, allow_pickle=False)
        tmp = p.with_suffix(f".tmp{os.getpid()}")
        tmp.write_bytes(buf.getvalue())
        os.replace(tmp, p)


class AudioEncoder:
    """Encodes audio files to int16 codes through the Higgs tokenizer's own `encode` (one clip per call: padding
    clips into a batch changes the codes near each clip's end, so a clip's codes would depend on its batch)."""

    def __init__(self, name_or_path: str, cache_dir: str | Path | None, device: str | None = None):
        self.name_or_path = name_or_path
        self.fingerprint = tokenizer_fingerprint(name_or_path)
        self.cache = CodeCache(cache_dir, self.fingerprint) if cache_dir else None
        self.device = device or best_device()
        self._tok = None
        self.encoded = 0
        self.cache_hits = 0
        self.encoded_seconds = 0.0

    @property
    def tokenizer(self):
        if self._tok is None:
            self._tok = load_audio_tokenizer(self.name_or_path, self.device)
        return self._tok

    def encode_waveform(self, wav: np.ndarray, sr: int) -> np.ndarray:
        codes = self.tokenizer.encode(wav, sr)
        return codes.cpu().numpy().astype(np.int16)

    def encode_file(self, path: str | Path) -> tuple[np.ndarray, str]:
        digest = file_sha256(path)
        if self.cache is not None and (codes := self.cache.get(digest)) is not None:
            self.cache_hits += 1
            return codes, digest
        wav, sr = read_audio(path)
        codes = self.encode_waveform(wav, sr)
        self.encoded += 1
        self.encoded_seconds += len(wav) / sr
        if self.cache is not None:
            self.cache.put(digest, codes)
        return codes, digest
