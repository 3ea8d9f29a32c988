"""Load HiggsAudioModel and its tokenizer; activation checkpointing; LoRA with peft."""

from __future__ import annotations

import dataclasses
import functools
import re

import torch

from higgs_ds.checkpoints.hub import locate, resolve
from higgs_ds.config import ConfigError, LoraConfig, ModelConfig

LORA_PRESETS = {
    # attention of every decoder layer + the DualFFN audio path
    "attention_audio_ffn": ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                            "audio_mlp.gate_proj", "audio_mlp.up_proj", "audio_mlp.down_proj"],
    # the two output heads only
    "heads": ["audio_decoder_proj.text_lm_head", "audio_decoder_proj.audio_lm_head"],
}


def resolve_model(cfg: ModelConfig) -> ModelConfig:
    """CFG with the model and text tokenizer named as resolved (`REPO@COMMIT` or a directory), downloading hub
    checkpoints and checking their layout on the way (nothing converted): what a run records to be reproducible."""
    model, layout = locate(cfg.path, "model")
    tokenizer, _ = locate(cfg.tokenizer or cfg.path, "text_tokenizer")
    return dataclasses.replace(cfg, path=model.spec, tokenizer=tokenizer.spec, layout=layout)


def load_model(cfg: ModelConfig, dtype: torch.dtype | str = torch.float32):
    """HiggsAudioModel from a directory or hub id; `model.name_or_path` is the hub id (peft records it as the base
    of adapters) and `model.revision` the commit."""
    from boson_multimodal.model.higgs_audio import HiggsAudioModel

    checkpoint = resolve(cfg.path, "model")
    model = HiggsAudioModel.from_pretrained(str(checkpoint.path), torch_dtype=dtype)
    model.name_or_path = model.config._name_or_path = checkpoint.repo_id or str(checkpoint.origin or checkpoint.path)
    model.revision = checkpoint.commit
    if cfg.activation_checkpointing:
        enable_activation_checkpointing(model)
    return model


def load_tokenizer(cfg: ModelConfig):
    from transformers import AutoTokenizer

    # a native tokenizer's copy with its config readable by transformers 4.x too (the oracle venv): files only
    return AutoTokenizer.from_pretrained(str(resolve(cfg.tokenizer or cfg.path, "text_tokenizer").path))


def enable_activation_checkpointing(model) -> None:
    """Recompute each decoder layer in backward (upstream has no checkpointing path: its
    gradient_checkpointing_enable() raises). Non-reentrant checkpointing keeps loss and gradients identical."""
    from torch.utils.checkpoint import checkpoint

    for layer in model.layers:
        if getattr(layer, "_higgs_ds_checkpointed", False):
            continue
        inner = layer.forward

        @functools.wraps(inner)
        def forward(*args, _inner=inner, **kwargs):
            if torch.is_grad_enabled() and not kwargs.get("use_cache"):
                return checkpoint(_inner, *args, use_reentrant=False, **kwargs)
            return _inner(*args, **kwargs)

        layer.forward = forward
        layer._higgs_ds_checkpointed = True


def lora_targets(cfg: LoraConfig, presets: dict[str, list[str]] = LORA_PRESETS) -> list[str]:
    return cfg.targets if cfg.preset == "custom" else presets[cfg.preset]


def apply_lora(model, cfg: LoraConfig, presets: dict[str, list[str]] = LORA_PRESETS):
    """Wrap the model with peft LoRA adapters; only adapter (and modules_to_save) parameters train. PRESETS name
    the targets of `cfg.preset` in the model's module names."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    targets = lora_targets(cfg, presets)
    names = [n for n, _ in model.named_modules()]
    for key, wanted in (("lora.targets", targets), ("lora.modules_to_save", cfg.modules_to_save)):
        for t in wanted:
            if not any(n == t or n.endswith("." + t) for n in names):
                near = [n for n in names if n.endswith(t.rsplit(".", 1)[-1])][:1] or names[5:6]
                raise ConfigError(f"{key}: {t!r} matches no module of the model (it has e.g. {near[0]!r}; the "
                                 f"native model names its heads text_lm_head and audio_lm_head, without "
                                 f"audio_decoder_proj.)")
    pattern = r"^(.*\.)?(" + "|".join(re.escape(t) for t in targets) + r")$"
    peft_cfg = PeftLoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=pattern,
                              modules_to_save=cfg.modules_to_save or None, bias="none")
    return get_peft_model(model, peft_cfg, revision=getattr(model, "revision", None))


MODEL_INPUTS = ("input_ids", "attention_mask", "audio_in_ids", "audio_in_ids_start", "audio_out_ids",
                "audio_out_ids_start", "audio_out_ids_start_group_loc", "label_ids", "label_audio_ids")


def batch_to_inputs(batch, device) -> dict:
    out = {}
    for k in MODEL_INPUTS:
        v = getattr(batch, k)
        out[k] = v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v
    return out
