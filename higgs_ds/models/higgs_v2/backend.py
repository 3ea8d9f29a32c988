"""The native backend: Higgs-Audio v2 on HiggsAudioV2ForConditionalGeneration, for the train loop."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from higgs_ds.checkpoints.hub import resolve, resolve_native_model
from higgs_ds.checkpoints.native import (AUDIO_DELAY_TOKEN, AUDIO_EOS_TOKEN, AUDIO_IN_TOKEN, boson_config,
                                          special_token_ids)
from higgs_ds.config import ModelConfig
from higgs_ds.data.collate import CollatorSettings
from higgs_ds.models.backend import ModelBackend
from higgs_ds.models.higgs_v2.heads import forward
from higgs_ds.models.higgs_v2.inputs import NativeBatch, NativeCollator
from higgs_ds.models.higgs_v2.model import LORA_PRESETS, load_native_model


def load(cfg: ModelConfig, dtype: torch.dtype | str = torch.float32):
    """The model CFG names in the native layout (a boson-layout checkpoint converted once, hub.resolve_native_model);
    `name_or_path` is the hub id (peft records it as the base of adapters) and `revision` the commit."""
    checkpoint = resolve_native_model(cfg.path, cfg.tokenizer)
    model = load_native_model(checkpoint.path, dtype, cfg.activation_checkpointing)
    model.name_or_path = model.config._name_or_path = checkpoint.repo_id or str(checkpoint.origin or checkpoint.path)
    model.revision = checkpoint.commit
    return model


def collator_settings(config, model_cfg: ModelConfig) -> CollatorSettings:
    """The settings our samples were tokenized under, read from the native config and the text tokenizer (the ids
    of <|AUDIO|> and <|audio_eos|> live in the tokenizer only)."""
    tokenizer_dir = resolve(model_cfg.tokenizer or model_cfg.path, "text_tokenizer").path
    return settings_from_ids(config.to_dict(), special_token_ids(tokenizer_dir))


def settings_from_ids(native: dict, ids: dict[str, int]) -> CollatorSettings:
    """The collator settings of the native config NATIVE, with IDS the text tokenizer's ids of its audio tokens."""
    return CollatorSettings.from_config(SimpleNamespace(**boson_config(native, ids, "the model's config")))


def settings_for_tokenizer(config, tokenizer) -> CollatorSettings:
    """collator_settings with the text tokenizer already loaded (generation)."""
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in (AUDIO_IN_TOKEN, AUDIO_EOS_TOKEN, AUDIO_DELAY_TOKEN)}
    return settings_from_ids(config.to_dict(), ids)


def make_collator(config, model_cfg: ModelConfig, data_cfg) -> NativeCollator:
    return NativeCollator(collator_settings(config, model_cfg), config.audio_token_id)


def sizes(batch: NativeBatch) -> tuple[int, int]:
    return int(batch.attention_mask.numpy().sum()), batch.audio_frames  # host numbers of the host batch


BACKEND = ModelBackend(
    name="native", load=load, lora_presets=LORA_PRESETS, make_collator=make_collator,
    to_device=lambda batch, device: batch.to(device), heads=forward,
    label_counts=lambda batch: (batch.text_label_count, batch.audio_label_count), sizes=sizes,
    num_codebooks=lambda config: config.num_codebooks,
    vocabularies=lambda config: (config.vocab_size, config.codebook_size))
