"""Per-step statistics with named fields: summed over a step's micro-batches on each rank, then over the ranks in
one all-reduce that also carries the stop agreement."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import numpy as np

from higgs_ds.distributed import all_reduce_sum
from higgs_ds.training.loss import TokenSums


@dataclass
class StepStats:
    num_codebooks: int
    text_sum: float = 0.0  # summed CE over text tokens
    audio_sum: float = 0.0  # summed CE over (frame, codebook) pairs
    text_tokens: float = 0.0
    audio_tokens: float = 0.0
    positions: float = 0.0  # sequence positions the model ran (text + audio steps): the tokens of tokens/s
    audio_seconds: float = 0.0
    skipped_samples: float = 0.0  # samples of the step's micro-batches that did not read or decode
    stop: float = 0.0  # > 0 once reduced: some rank received a stop signal
    codebook_sums: np.ndarray = field(default=None)
    codebook_tokens: np.ndarray = field(default=None)

    def __post_init__(self):
        if self.codebook_sums is None:
            self.codebook_sums = np.zeros(self.num_codebooks)
        if self.codebook_tokens is None:
            self.codebook_tokens = np.zeros(self.num_codebooks)

    def add(self, sums: TokenSums, batch, frame_rate: float, skipped: int = 0) -> None:
        """One micro-batch's loss sums and sizes, and how many of its samples were skipped."""
        self.skipped_samples += skipped
        self.text_sum += sums.text_sum.item()
        self.audio_sum += sums.audio_sum.item()
        self.text_tokens += sums.text_tokens.item()
        self.audio_tokens += sums.audio_tokens.item()
        if sums.codebook_tokens.numel():
            self.codebook_sums += sums.codebook_sums.cpu().numpy()
            self.codebook_tokens += sums.codebook_tokens.cpu().numpy()
        audio_steps = sum(0 if x is None else x.shape[-1] for x in (batch.audio_in_ids, batch.audio_out_ids))
        self.positions += int(batch.attention_mask.sum()) + audio_steps
        self.audio_seconds += audio_steps / frame_rate

    def all_reduced(self, device, stop: bool = False) -> "StepStats":
        """Every field summed over the ranks, this rank's stop flag included (one all-reduce)."""
        scalars = [f.name for f in fields(self) if f.name not in ("num_codebooks", "codebook_sums", "codebook_tokens")]
        local = [getattr(self, k) for k in scalars]
        local[scalars.index("stop")] = 1.0 if stop else 0.0
        n = self.num_codebooks
        summed = np.asarray(all_reduce_sum(local + self.codebook_sums.tolist() + self.codebook_tokens.tolist(),
                                           device))
        out = StepStats(n, **dict(zip(scalars, summed[:len(scalars)].tolist())))
        out.codebook_sums = summed[len(scalars):len(scalars) + n]
        out.codebook_tokens = summed[len(scalars) + n:]
        return out

    @property
    def text_loss(self) -> float:
        return self.text_sum / max(1.0, self.text_tokens)

    @property
    def audio_loss(self) -> float:
        return self.audio_sum / max(1.0, self.audio_tokens)

    def codebook_losses(self) -> dict[str, float]:
        return {f"audio_loss_cb{i}": float(s / t) for i, (s, t) in enumerate(zip(self.codebook_sums,
                                                                                   self.codebook_tokens)) if t}
