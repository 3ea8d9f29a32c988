"""The Higgs TTS 3 backend: HiggsTTS3 (transformers' Qwen3Model + the fused, tied audio embedding), for the loop."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from higgs_ds.checkpoints.hub import locate
from higgs_ds.config import ConfigError, ModelConfig
from higgs_ds.data.prompt_formats import tts3_ids
from higgs_ds.models.backend import ModelBackend
from higgs_ds.models.higgs_v3.export import carry_run_licence
from higgs_ds.models.higgs_v3.heads import forward
from higgs_ds.models.higgs_v3.inputs import V3Batch, V3Collator
from higgs_ds.models.higgs_v3.layout import load_model
from higgs_ds.models.higgs_v3.model import LORA_PRESETS, AudioConfig


@dataclass(frozen=True)
class V3Settings:
    """What the data plan asks of a collator: the positions a clip takes beyond its frames, with its CLIP marker
    counted among the stored ids (a reference is T + 7 rows, a target fed as T + 6)."""

    num_codebooks: int

    @property
    def clip_overhead(self) -> int:
        return self.num_codebooks - 2


def load(cfg: ModelConfig, dtype: torch.dtype | str = torch.float32):
    """The model CFG names (a Higgs TTS 3 checkpoint in its native layout, read as it is)."""
    checkpoint, layout = locate(cfg.path, "model")
    if layout != "tts3":
        raise ConfigError(f"model.path: {cfg.path} is not a Higgs TTS 3 checkpoint ({layout} layout)")
    model = load_model(checkpoint.path, dtype)
    if cfg.activation_checkpointing:
        model.body.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    model.name_or_path = checkpoint.repo_id or str(checkpoint.path)  # peft records it as the adapter's base
    model.revision = checkpoint.commit
    return model


def make_collator(config: dict, model_cfg: ModelConfig, data_cfg) -> V3Collator:
    from higgs_ds.checkpoints.model import load_tokenizer

    tokenizer = load_tokenizer(model_cfg)
    if tokenizer.pad_token_id is None:
        raise ConfigError(f"model.tokenizer: {model_cfg.tokenizer or model_cfg.path} has no pad token")
    audio = AudioConfig.from_config(config)
    collator = V3Collator(audio, tts3_ids(tokenizer)["<|audio|>"], tokenizer.pad_token_id)
    collator.settings = V3Settings(audio.num_codebooks)
    return collator


def sizes(batch: V3Batch) -> tuple[int, int]:
    return int(batch.attention_mask.numpy().sum()), batch.audio_frames  # host numbers of the host batch


BACKEND = ModelBackend(
    name="native", load=load, lora_presets=LORA_PRESETS, make_collator=make_collator,
    to_device=lambda batch, device: batch.to(device), heads=forward,
    label_counts=lambda batch: (0, batch.audio_label_count), sizes=sizes,
    num_codebooks=lambda config: AudioConfig.from_config(config).num_codebooks,
    vocabularies=lambda config: (config["text_config"]["vocab_size"], AudioConfig.from_config(config).codebook_size),
    carry_files=carry_run_licence)
