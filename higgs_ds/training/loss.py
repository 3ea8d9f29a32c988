"""The step loss from the micro-batches' summed cross-entropies and the step's label counts.

Normalisation: per token over the whole optimizer step. A backend's heads give each micro-batch's summed CE and
its token counts (TokenSums); the train loop all-reduces the label counts of every micro-batch of the step on every
rank first (on the device: the host never waits for them), then divides each micro-batch's sums by those global
counts, so the gradient equals the per-token mean over the global batch whatever the split into ranks and
accumulation steps.
"""

from __future__ import annotations

import torch

from higgs_ds.models.sums import TokenSums


def combine(sums: TokenSums, text_total, audio_total, text_weight: float, audio_weight: float) -> torch.Tensor:
    """This micro-batch's share of the step loss: weighted per-token means with the step's global token counts.
    The counts are numbers or device tensors (then nothing is read to the host); a count of 0 comes with a zero sum,
    so dividing by max(count, 1) adds nothing."""
    loss = sums.text_sum * 0.0
    if text_weight:
        loss = loss + text_weight * sums.text_sum / _at_least_one(text_total, sums.text_sum)
    if audio_weight:
        loss = loss + audio_weight * sums.audio_sum / _at_least_one(audio_total, sums.audio_sum)
    return loss


def _at_least_one(count, like: torch.Tensor):
    if isinstance(count, torch.Tensor):
        return count.to(like.dtype).clamp(min=1)
    return max(count, 1)
