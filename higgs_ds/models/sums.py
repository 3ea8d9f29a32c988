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
