"""Decode audio files (soundfile, never a shell) and check them against the bounds a training sample needs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


READABLE = ("wav", "flac", "mp3", "ogg (vorbis, opus)")  # libsndfile >= 1.1, inside the soundfile wheel; any rate and
# channel count: read_audio mixes down to mono, the audio tokenizer resamples to its own rate


class AudioError(ValueError):
    """An audio file is missing, does not decode, or is out of bounds."""


@dataclass(frozen=True)
class AudioLimits:
    min_seconds: float = 0.2
    max_seconds: float = 60.0
    min_sample_rate: int = 8000


def read_audio(path: str | Path) -> tuple[np.ndarray, int]:
    """Mono float32 waveform and its sample rate."""
    import soundfile as sf

    path = Path(path)
    if not path.is_file():
        raise AudioError(f"audio file {path} does not exist")
    try:
        wav, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as e:  # libsndfile raises RuntimeError/LibsndfileError/TypeError for broken files
        raise AudioError(f"audio file {path} does not decode ({e}); readable: {', '.join(READABLE)}") from None
    return wav.mean(axis=1), int(sr)


def check_audio(path: str | Path, limits: AudioLimits) -> float:
    """Decode the file fully and return its duration in seconds, or raise AudioError saying what is wrong."""
    wav, sr = read_audio(path)
    if sr < limits.min_sample_rate:
        raise AudioError(f"audio file {path}: sample rate {sr} Hz is below {limits.min_sample_rate} Hz")
    seconds = len(wav) / sr
    if seconds < limits.min_seconds:
        raise AudioError(f"audio file {path}: {seconds:.2f} s is shorter than the {limits.min_seconds} s minimum")
    if seconds > limits.max_seconds:
        raise AudioError(f"audio file {path}: {seconds:.2f} s is longer than the {limits.max_seconds} s maximum")
    if not np.isfinite(wav).all():
        raise AudioError(f"audio file {path}: contains NaN or infinite samples")
    if not np.any(wav):
        raise AudioError(f"audio file {path}: is pure digital silence")
    return seconds
