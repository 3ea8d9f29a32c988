"""Losses as pure functions of (model outputs, batch): text CE, audio CE per codebook, token counts.

Normalisation: per token over the whole optimizer step. `token_sums` gives each micro-batch's summed CE and its
token counts; the train loop all-reduces the label counts of every micro-batch of the step on every rank first (on
the device: the host never waits for them), then divides each micro-batch's sums by those global counts, so the
gradient equals the per-token mean over the global batch whatever the split into ranks and accumulation steps.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from higgs_ds.data.collate import IGNORE
from higgs_ds.models.sums import TokenSums


def token_sums(outputs, label_audio_ids: torch.Tensor | None) -> TokenSums:
    """Shifted CE sums: text logits[:, :-1] vs expanded_labels[:, 1:]; audio_logits[:-1] vs label_audio_ids[:, 1:].

    The model computes no loss and does not shift; audio segments are concatenated along time, and each segment
    starts with an ignored label (the stream bos), so shifting across segment borders trains nothing wrong."""
    logits = outputs.logits[:, :-1].float()
    labels = outputs.expanded_labels[:, 1:]
    text_sum = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=IGNORE,
                               reduction="sum")
    text_tokens = (labels != IGNORE).sum()
    audio_logits = outputs.audio_logits
    if audio_logits is None or label_audio_ids is None or label_audio_ids.numel() == 0 or audio_logits.shape[0] < 2:
        ncb = audio_logits.shape[1] if audio_logits is not None else 0  # no audio at all: no per-codebook sums
        zero = logits.sum() * 0.0  # keeps the graph connected so backward runs on every rank
        none = torch.zeros(ncb, dtype=torch.long, device=logits.device)
        return TokenSums(text_sum, zero, none.float(), text_tokens, none.sum(), none)
    a_logits = audio_logits[:-1].float()  # (T-1, C, V)
    a_labels = label_audio_ids[:, 1:].transpose(0, 1)  # (T-1, C)
    per = F.cross_entropy(a_logits.reshape(-1, a_logits.shape[-1]), a_labels.reshape(-1), ignore_index=IGNORE,
                          reduction="none").view(a_labels.shape)
    valid = a_labels != IGNORE
    codebook_sums = (per * valid).sum(0)
    codebook_tokens = valid.sum(0)
    return TokenSums(text_sum, codebook_sums.sum(), codebook_sums.detach(), text_tokens, codebook_tokens.sum(),
                     codebook_tokens)


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


def codebook_hits(outputs, label_audio_ids: torch.Tensor | None, ks: tuple[int, ...] = (1, 5)) -> torch.Tensor:
    """(len(ks), num_codebooks) counts of audio targets among the top-k of their shifted logits (teacher-forced
    accuracy: the signal that needs no generation); divide by TokenSums.codebook_tokens."""
    audio_logits = outputs.audio_logits
    ncb = audio_logits.shape[1] if audio_logits is not None else 0
    hits = torch.zeros(len(ks), ncb, dtype=torch.long)
    if audio_logits is None or label_audio_ids is None or label_audio_ids.numel() == 0 or audio_logits.shape[0] < 2:
        return hits
    a_labels = label_audio_ids[:, 1:].transpose(0, 1)  # (T-1, C)
    valid = a_labels != IGNORE
    top = audio_logits[:-1].topk(max(ks), dim=-1).indices  # (T-1, C, kmax)
    match = top == a_labels.unsqueeze(-1)
    for i, k in enumerate(ks):
        hits[i] = (match[..., :k].any(-1) & valid).sum(0).cpu()
    return hits
