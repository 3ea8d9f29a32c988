"""A micro-batch's summed cross-entropies and label counts: what every family's heads hand the train loop."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class TokenSums:
    text_sum: torch.Tensor  # scalar, summed CE over text tokens
    audio_sum: torch.Tensor  # scalar, summed CE over (audio frame, codebook) pairs
    codebook_sums: torch.Tensor  # (num_codebooks,), detached
    text_tokens: torch.Tensor  # scalar long
    audio_tokens: torch.Tensor  # scalar long, (frame, codebook) pairs
    codebook_tokens: torch.Tensor  # (num_codebooks,)


def audio_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, ignore: int = -100):
    """(summed CE, per-codebook sums detached, per-codebook label counts) of fp32 LOGITS (positions, codebooks,
    codebook_size) against TARGETS (positions, codebooks), IGNORE where a cell has no label."""
    import torch.nn.functional as F

    per = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=ignore,
                          reduction="none").view(targets.shape)
    valid = targets != ignore
    codebook_sums = (per * valid).sum(0)
    return codebook_sums.sum(), codebook_sums.detach(), valid.sum(0)
