"""The Higgs audio tokenizer: load it (local dir or hub id at a pinned revision), encode waveforms to (8, T) codes,
cache codes by content."""

from __future__ import annotations

import hashlib
import io
import json
import math
from pathlib import Path

import numpy as np

from higgs_ds.audio import read_audio
from higgs_ds.checkpoints.checkpoint_dir import Checkpoint, semantic_model_at, semantic_model_repo
from higgs_ds.checkpoints.hub import resolve_audio_tokenizer
from higgs_ds.files import atomic_write, file_sha256


# What makes the codes in shards, whichever layout the tokenizer came in: boson_multimodal's own encoder. transformers'
# HiggsAudioV2TokenizerModel pads the acoustic encoder's input by hop_length // 2 (480 samples a side) where boson pads
# 160 x semantic_downsample_factor (320), and its codes differ from these in some frames (tests/checkpoints/native measure it).
CODES_MADE_BY = {"implementation": "boson_multimodal.audio_processing.higgs_audio_tokenizer.HiggsAudioTokenizer",
                 "boson_multimodal": "0.1.1", "semantic_input_padding": [160, 160],
                 "acoustic_input_padding": "160 x semantic_downsample_factor a side (320 for v2), when needed"}


def best_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_audio_tokenizer(name_or_path: str, device: str | None = None, semantic_model: str | None = None):
    """boson_multimodal's loader, plus the strict key check it skips (it loads with strict=False)."""
    return _load(*resolve_audio_tokenizer(name_or_path, semantic_model), device or best_device())


def _load(checkpoint: Checkpoint, semantic: Checkpoint | None, device: str):
    import torch
    from boson_multimodal.audio_processing.higgs_audio_tokenizer import load_higgs_audio_tokenizer
    try:  # transformers >= 5 moved it
        from transformers.initialization import no_init_weights
    except ImportError:
        from transformers.modeling_utils import no_init_weights

    path = checkpoint.path
    try:  # every weight comes from model.pth (checked below): drawing random ones first cost a third of the load
        with semantic_model_at(semantic_model_repo(checkpoint), semantic), no_init_weights():
            tok = load_higgs_audio_tokenizer(str(path), device=device)
    except OSError as e:
        raise RuntimeError(f"could not build the audio tokenizer from {path}: its semantic model did not load ({e}). "
                           f"Pass its directory with --semantic-model (README: Which checkpoints).") from e
    try:  # mapped: only the keys are read, not the weights a second time
        state = torch.load(path / "model.pth", map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # a file in torch's legacy (non-zip) format cannot be mapped
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


def tokenizer_fingerprint(checkpoint: Checkpoint, semantic: Checkpoint | None) -> str:
    """Content hash of the tokenizer's config and weights and of its semantic model's: cached codes are valid only
    for the same pair."""
    h = hashlib.sha256()
    for name in ("config.json", "model.pth"):
        h.update(file_sha256(checkpoint.path / name).encode())
    if semantic is not None:
        for f in sorted(semantic.path.iterdir()):
            if f.suffix in (".json", ".safetensors", ".bin"):
                h.update(f.name.encode() + file_sha256(f).encode())
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
        atomic_write(p, buf.getvalue())


class AudioEncoder:
    """Encodes audio files to int16 codes through the Higgs tokenizer's own `encode` (one clip per call: padding
    clips into a batch changes the codes near each clip's end, so a clip's codes would depend on its batch)."""

    def __init__(self, name_or_path: str, cache_dir: str | Path | None, device: str | None = None,
                 semantic_model: str | None = None):
        self.checkpoint, self.semantic = resolve_audio_tokenizer(name_or_path, semantic_model)
        self.fingerprint = tokenizer_fingerprint(self.checkpoint, self.semantic)
        self.cache = CodeCache(cache_dir, self.fingerprint) if cache_dir else None
        self.device = device or best_device()
        self._tok = None
        self.encoded = 0
        self.cache_hits = 0
        self.encoded_seconds = 0.0
        config = json.loads((self.checkpoint.path / "config.json").read_text())
        self.num_codebooks, self.codebook_size = int(config["n_q"]), int(config["bins"])
        # as boson_multimodal's HiggsAudioTokenizer computes it (25 for v2: 24 kHz / 960 samples a frame)
        self.frame_rate = math.ceil(config["sample_rate"] / math.prod(config["ratios"]))

    @property
    def tokenizer(self):
        if self._tok is None:
            self._tok = _load(self.checkpoint, self.semantic, self.device)
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
