"""Per-step statistics with named fields, kept where they are made: loss sums and token counts as one float64
vector on the step's device (no host read per micro-batch), batch sizes as host numbers (the collated batch is on
the host). `all_reduced` sums both over the ranks in one all-reduce, with the stop agreement and any other device
scalars the step needs, and reads the result to the host once."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from higgs_ds.distributed import sum_over_ranks
from higgs_ds.models.sums import TokenSums

DEVICE_FIELDS = ("text_sum", "audio_sum", "text_tokens", "audio_tokens")  # then codebook sums, codebook tokens
HOST_FIELDS = ("positions", "audio_seconds", "skipped_samples", "stop")


@dataclass
class StepTotals:
    """A step's statistics summed over its micro-batches and the ranks, as host numbers."""

    text_sum: float  # summed CE over text tokens
    audio_sum: float  # summed CE over (frame, codebook) pairs
    text_tokens: float
    audio_tokens: float
    positions: float  # sequence positions the model ran (text + audio steps): the tokens of tokens/s
    audio_seconds: float
    skipped_samples: float  # samples of the step's micro-batches that did not read or decode
    stop: float  # > 0: some rank received a stop signal
    codebook_sums: np.ndarray
    codebook_tokens: np.ndarray
    also: list[float]  # the extra device scalars passed to all_reduced, summed, in order

    @property
    def text_loss(self) -> float:
        return self.text_sum / max(1.0, self.text_tokens)

    @property
    def audio_loss(self) -> float:
        return self.audio_sum / max(1.0, self.audio_tokens)

    def codebook_losses(self) -> dict[str, float]:
        return {f"audio_loss_cb{i}": float(s / t) for i, (s, t) in enumerate(zip(self.codebook_sums,
                                                                                   self.codebook_tokens)) if t}


class StepStats:
    """One rank's sums over a step's micro-batches."""

    def __init__(self, num_codebooks: int, device):
        self.num_codebooks = num_codebooks
        self.sums = torch.zeros(len(DEVICE_FIELDS) + 2 * num_codebooks, dtype=torch.float64, device=device)
        self.host = dict.fromkeys(HOST_FIELDS, 0.0)

    def add(self, sums: TokenSums, sizes: tuple[int, int], frame_rate: float, skipped: int = 0) -> None:
        """One micro-batch's loss sums (device tensors, left there), its sizes (sequence positions run, audio
        frames: from the host batch) and how many of its samples were skipped."""
        n = self.num_codebooks
        scalars = torch.stack([sums.text_sum.detach(), sums.audio_sum.detach(), sums.text_tokens,
                               sums.audio_tokens]).to(torch.float64)
        if sums.codebook_tokens.numel():
            per_codebook = torch.cat([sums.codebook_sums.to(torch.float64), sums.codebook_tokens.to(torch.float64)])
        else:  # no audio in this micro-batch
            per_codebook = torch.zeros(2 * n, dtype=torch.float64, device=self.sums.device)
        self.sums += torch.cat([scalars, per_codebook])
        positions, audio_frames = sizes
        self.host["positions"] += positions
        self.host["audio_seconds"] += audio_frames / frame_rate
        self.host["skipped_samples"] += skipped

    def all_reduced(self, stop: bool = False, also: tuple[torch.Tensor, ...] = ()) -> StepTotals:
        """Every field summed over the ranks, this rank's stop flag and the scalars in `also` included: one
        all-reduce, one read to the host."""
        host = [*(self.host[k] for k in HOST_FIELDS[:-1]), 1.0 if stop else 0.0]
        extra = [t.detach().reshape(-1).to(torch.float64) for t in also]
        vector = torch.cat([self.sums, torch.tensor(host, dtype=torch.float64).to(self.sums.device), *extra])
        values = sum_over_ranks(vector).tolist()
        k, n = len(DEVICE_FIELDS), self.num_codebooks
        named = dict(zip(DEVICE_FIELDS, values[:k]))
        named.update(zip(HOST_FIELDS, values[k + 2 * n:k + 2 * n + len(HOST_FIELDS)]))
        return StepTotals(**named, codebook_sums=np.asarray(values[k:k + n]),
                          codebook_tokens=np.asarray(values[k + n:k + 2 * n]),
                          also=values[k + 2 * n + len(HOST_FIELDS):])


def step_label_counts(counts: list[tuple[int, int]], device) -> tuple[torch.Tensor, torch.Tensor]:
    """(text, audio) labels the step's micro-batches train on, known before the forward passes from the host
    batches (COUNTS, one pair a micro-batch): (this rank's, summed over the ranks), float64 device vectors. The sum
    normalises the loss; its all-reduce is queued on the device and read by no one on the host."""
    text, audio = sum(c[0] for c in counts), sum(c[1] for c in counts)
    local = torch.tensor([text, audio], dtype=torch.float64).to(device)
    return local, sum_over_ranks(local.clone())
