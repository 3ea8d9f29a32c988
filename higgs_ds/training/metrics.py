"""Rank-0 metrics: JSONL rows and TensorBoard events in the run dir, and a progress line (a bar on a terminal)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

from higgs_ds.files import atomic_write


def mel_image(wav: np.ndarray, sr: int, n_mels: int = 80) -> np.ndarray:
    """A log-mel spectrogram scaled to [0, 1], low frequencies at the bottom (an image TensorBoard shows)."""
    import librosa

    mel = librosa.power_to_db(librosa.feature.melspectrogram(y=wav, sr=sr, n_mels=n_mels), ref=np.max)
    return np.flipud((mel - mel.min()) / max(1e-9, float(mel.max() - mel.min()))).astype(np.float32)


def drop_rows_after(path: Path, step: int) -> None:
    """Keep the rows up to STEP: a run resumed from that step logs the later ones again, and a plot wants one row
    per step (train and eval each), the resumed run's."""
    lines = path.read_text().splitlines(keepends=True)
    kept = [x for x in lines if x.strip() and json.loads(x).get("step", 0) <= step]
    if len(kept) != len(lines):
        atomic_write(path, "".join(kept))


class Metrics:
    def __init__(self, run_dir: Path, total_steps: int, enabled: bool, progress_bar: bool = True,
                 resumed_at: int | None = None):
        self.enabled, self.total = enabled, total_steps
        self.tty = progress_bar and sys.stderr.isatty()
        self._jsonl = self._tb = None
        self._t0, self._step0 = time.time(), None
        if enabled:
            path = run_dir / "metrics.jsonl"
            if resumed_at is not None and path.exists():
                drop_rows_after(path, resumed_at)
            self._jsonl = open(path, "a", buffering=1)
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(run_dir / "tensorboard"))
            except ImportError:
                self._tb = None

    def log(self, row: dict) -> None:
        if not self.enabled:
            return
        row = {"time": round(time.time(), 3), **row}
        self._jsonl.write(json.dumps(row) + "\n")
        if self._tb is not None:
            prefix = f"{row.get('split', 'train')}/"
            for k, v in row.items():
                if isinstance(v, (int, float)) and k not in ("step", "time"):
                    self._tb.add_scalar(prefix + k, v, row["step"])

    def log_samples(self, step: int, rows: list[dict]) -> None:
        """TensorBoard audio and mel-spectrogram images of a listening evaluation's generated clips."""
        if not self.enabled or self._tb is None:
            return
        from higgs_ds.audio import read_audio

        for r in rows:
            if "error" in r or not r.get("wav"):
                continue
            wav, sr = read_audio(r["wav"])
            self._tb.add_audio(f"listen/{r['id']}", np.clip(wav, -1, 1)[None], step, sample_rate=sr)
            self._tb.add_image(f"listen_mel/{r['id']}", mel_image(wav, sr), step, dataformats="HW")

    def progress(self, row: dict) -> None:
        if not self.enabled:
            return
        step = row["step"]
        if self._step0 is None:
            self._step0, self._t0 = step - 1, time.time()
        rate = (time.time() - self._t0) / max(1, step - self._step0)
        eta = rate * (self.total - step)
        text = (f"step {step}/{self.total} loss {row['loss']:.4f} text {row['text_loss']:.4f} "
                f"audio {row['audio_loss']:.4f} lr {row['lr']:.2e} gnorm {row['grad_norm']:.3f} "
                f"tok/s {row['tokens_per_s']:.0f} audio-s/s {row['audio_seconds_per_s']:.1f} "
                f"eta {int(eta // 60)}m{int(eta % 60):02d}s")
        if self.tty:
            width = 20
            done = int(width * step / self.total)
            print(f"\r[{'#' * done}{'.' * (width - done)}] {text}", end="", file=sys.stderr, flush=True)
        else:
            print(text, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.tty and self.enabled:
            print(file=sys.stderr)
        if self._jsonl:
            self._jsonl.close()
        if self._tb is not None:
            self._tb.close()
