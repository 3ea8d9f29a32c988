"""The loss head of Higgs TTS 3, applied only where a label is: the tied audio head at the positions that predict a
row of the target clip, in fp32 from there on. (No text labels: see inputs.py.)"""

from __future__ import annotations

import torch

from higgs_ds.data.collate import IGNORE
from higgs_ds.models.backend import HeadOutputs, base_model
from higgs_ds.models.higgs_v3.inputs import V3Batch
from higgs_ds.models.sums import TokenSums, audio_cross_entropy


def forward(model, batch: V3Batch) -> HeadOutputs:
    base = base_model(model)
    embeds = base.embed(batch.input_ids, batch.audio_input_positions, batch.audio_input_rows)
    hidden = base.hidden_states(embeds, batch.attention_mask, batch.position_ids)
    hidden = hidden.reshape(-1, hidden.shape[-1]).index_select(0, batch.audio_positions)
    logits = base.audio_logits(hidden).float()
    audio_sum, codebook_sums, codebook_tokens = audio_cross_entropy(logits, batch.audio_targets, IGNORE)
    zero = torch.zeros((), device=logits.device)
    sums = TokenSums(zero, audio_sum, codebook_sums, torch.zeros((), dtype=torch.long, device=logits.device),
                     codebook_tokens.sum(), codebook_tokens)
    return HeadOutputs(sums, logits.detach(), batch.audio_targets)
