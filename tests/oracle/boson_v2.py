"""Higgs-Audio v2 on boson_multimodal's HiggsAudioModel, behind the product's ModelBackend seam: the previous
engine, kept as the oracle the native backend is proven equal to. Its batches are boson's HiggsAudioBatchInput from
its own HiggsAudioSampleCollator; its forward gives logits at every position, shifted here against the labels.
Importing this module also registers its synthesizer (tests.oracle.boson_synthesis) for boson's model_type."""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F

from higgs_ds.checkpoints.hub import resolve
from higgs_ds.config import ModelConfig
from higgs_ds.data.collate import IGNORE, CollatorSettings, Sample
from higgs_ds.models.backend import HeadOutputs, ModelBackend
from higgs_ds.models.sums import TokenSums
from higgs_ds.listening.synthesis import SYNTHESIZERS
from tests.oracle.boson_synthesis import BosonSynthesizer

LORA_PRESETS = {
    # attention of every decoder layer + the DualFFN audio path
    "attention_audio_ffn": ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                            "audio_mlp.gate_proj", "audio_mlp.up_proj", "audio_mlp.down_proj"],
    # the two output heads only
    "heads": ["audio_decoder_proj.text_lm_head", "audio_decoder_proj.audio_lm_head"],
}
MODEL_INPUTS = ("input_ids", "attention_mask", "audio_in_ids", "audio_in_ids_start", "audio_out_ids",
                "audio_out_ids_start", "audio_out_ids_start_group_loc", "label_ids", "label_audio_ids")


def load_model(cfg: ModelConfig, dtype: torch.dtype | str = torch.float32):
    """HiggsAudioModel from a boson-layout directory or hub id; `name_or_path` is the hub id (peft records it as the
    base of adapters) and `revision` the commit."""
    from boson_multimodal.model.higgs_audio import HiggsAudioModel

    checkpoint = resolve(cfg.path, "model")
    model = HiggsAudioModel.from_pretrained(str(checkpoint.path), torch_dtype=dtype)
    model.name_or_path = model.config._name_or_path = checkpoint.repo_id or str(checkpoint.origin or checkpoint.path)
    model.revision = checkpoint.commit
    if cfg.activation_checkpointing:
        enable_activation_checkpointing(model)
    return model


def enable_activation_checkpointing(model) -> None:
    """Recompute each decoder layer in backward (boson's gradient_checkpointing_enable() raises). Non-reentrant
    checkpointing keeps loss and gradients identical."""
    from torch.utils.checkpoint import checkpoint

    for layer in model.layers:
        inner = layer.forward

        @functools.wraps(inner)
        def forward(*args, _inner=inner, **kwargs):
            if torch.is_grad_enabled() and not kwargs.get("use_cache"):
                return checkpoint(_inner, *args, use_reentrant=False, **kwargs)
            return _inner(*args, **kwargs)

        layer.forward = forward


class BosonCollator:
    """boson_multimodal's HiggsAudioSampleCollator on our samples (fresh ChatMLDatasetSamples every call: it masks
    labels in place)."""

    def __init__(self, settings: CollatorSettings):
        from boson_multimodal.data_collator.higgs_audio_collator import HiggsAudioSampleCollator

        s = self.settings = settings
        self.collator = HiggsAudioSampleCollator(
            whisper_processor=None, audio_in_token_id=s.audio_in_token_id, audio_out_token_id=s.audio_out_token_id,
            pad_token_id=s.pad_token_id, audio_stream_bos_id=s.audio_stream_bos_id,
            audio_stream_eos_id=s.audio_stream_eos_id, round_to=s.round_to, pad_left=False,
            encode_whisper_embed=False, return_audio_in_tokens=s.return_audio_in_tokens,
            audio_num_codebooks=s.num_codebooks, use_delay_pattern=s.use_delay_pattern,
            disable_audio_codes_transform=False, mask_audio_out_token_label=True)

    def __call__(self, samples: list[Sample]):
        from boson_multimodal.dataset.chatml_dataset import ChatMLDatasetSample

        batch = []
        for s in samples:
            starts = np.concatenate([[0], np.cumsum(s.frames)[:-1]]).astype(np.int64)
            batch.append(ChatMLDatasetSample(
                input_ids=torch.tensor(s.input_ids, dtype=torch.long),
                label_ids=torch.tensor(s.label_ids, dtype=torch.long),
                audio_ids_concat=torch.from_numpy(s.codes.astype(np.int64)), audio_ids_start=torch.from_numpy(starts),
                audio_waveforms_concat=torch.zeros(0), audio_waveforms_start=torch.zeros(0, dtype=torch.long),
                audio_sample_rate=torch.zeros(0), audio_speaker_indices=torch.zeros(0, dtype=torch.long)))
        return self.collator(batch)


def make_collator(config) -> BosonCollator:
    return BosonCollator(CollatorSettings.from_config(config))


def batch_to_inputs(batch, device) -> dict:
    return {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in
            ((k, getattr(batch, k)) for k in MODEL_INPUTS)}


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
    make_collator=lambda config, model_cfg, data_cfg: make_collator(config),
    to_device=batch_to_inputs, heads=heads, label_counts=label_counts, sizes=sizes,
    num_codebooks=lambda config: config.audio_num_codebooks,
    vocabularies=lambda config: (config.text_config.vocab_size, config.audio_codebook_size + 2))

SYNTHESIZERS["higgs_audio"] = BosonSynthesizer
