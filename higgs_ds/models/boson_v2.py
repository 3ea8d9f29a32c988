"""Higgs-Audio v2 on boson_multimodal's HiggsAudioModel (transformers < 4.48): the backend until the native one
(higgs_v2) takes over. Its batches are boson's HiggsAudioBatchInput; its forward gives logits at every position,
shifted here against the labels."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from higgs_ds.checkpoints.model import LORA_PRESETS, batch_to_inputs, load_model
from higgs_ds.data.collate import IGNORE, check_collator, make_collator
from higgs_ds.models.backend import HeadOutputs, ModelBackend
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


def heads(engine, inputs: dict) -> HeadOutputs:
    outputs = engine(**inputs)
    labels = inputs["label_audio_ids"]
    sums = token_sums(outputs, labels)
    if outputs.audio_logits is None or labels is None or labels.numel() == 0 or outputs.audio_logits.shape[0] < 2:
        return HeadOutputs(sums, None, None)
    return HeadOutputs(sums, outputs.audio_logits[:-1], labels[:, 1:].transpose(0, 1))


def label_counts(batch) -> tuple[int, int]:
    text = int(np.count_nonzero(batch.label_ids.numpy() != IGNORE))
    audio = 0 if batch.label_audio_ids is None or batch.label_audio_ids.numel() == 0 else \
        int(np.count_nonzero(batch.label_audio_ids[:, 1:].numpy() != IGNORE))
    return text, audio


def sizes(batch) -> tuple[int, int]:
    audio_steps = sum(0 if x is None else x.shape[-1] for x in (batch.audio_in_ids, batch.audio_out_ids))
    return int(batch.attention_mask.numpy().sum()) + audio_steps, audio_steps


BACKEND = ModelBackend(
    name="boson", load=load_model, lora_presets=LORA_PRESETS,
    make_collator=lambda config, model_cfg, data_cfg: make_collator(config, data_cfg.collator),
    to_device=batch_to_inputs, heads=heads, label_counts=label_counts, sizes=sizes,
    num_codebooks=lambda config: config.audio_num_codebooks, check_collator=check_collator)
