"""Load HiggsAudioModel and its tokenizer and collator; activation checkpointing; LoRA with peft."""

from __future__ import annotations

import functools
import re

import torch

from higgs_ds.config import LoraConfig, ModelConfig

LORA_PRESETS = {
    # attention of every decoder layer + the DualFFN audio path
    "attention_audio_ffn": ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                            "audio_mlp.gate_proj", "audio_mlp.up_proj", "audio_mlp.down_proj"],
    # the two output heads only
    "heads": ["audio_decoder_proj.text_lm_head", "audio_decoder_proj.audio_lm_head"],
}


def load_model(cfg: ModelConfig, dtype: torch.dtype = torch.float32):
    from boson_multimodal.model.higgs_audio import HiggsAudioModel

    model = HiggsAudioModel.from_pretrained(cfg.path, torch_dtype=dtype)
    if cfg.activation_checkpointing:
        enable_activation_checkpointing(model)
    return model


def load_tokenizer(cfg: ModelConfig):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(cfg.tokenizer or cfg.path)


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


def lora_targets(cfg: LoraConfig) -> list[str]:
    return cfg.targets if cfg.preset == "custom" else LORA_PRESETS[cfg.preset]


def apply_lora(model, cfg: LoraConfig):
    """Wrap the model with peft LoRA adapters; only adapter (and modules_to_save) parameters train."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    targets = lora_targets(cfg)
    names = [n for n, _ in model.named_modules()]
    for t in targets:
        if not any(n == t or n.endswith("." + t) for n in names):
            raise ValueError(f"lora target {t!r} matches no module of the model (e.g. {names[5]!r})")
    pattern = r"^(.*\.)?(" + "|".join(re.escape(t) for t in targets) + r")$"
    peft_cfg = PeftLoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=pattern,
                              modules_to_save=cfg.modules_to_save or None, bias="none")
    return get_peft_model(model, peft_cfg)


def make_collator(config):
    """boson_multimodal's collator, set up from the model config (shards carry codes, never waveforms)."""
    from boson_multimodal.data_collator.higgs_audio_collator import HiggsAudioSampleCollator

    if config.encode_whisper_embed and not config.skip_audio_tower:
        raise ValueError("this model encodes reference audio with Whisper features; higgs-ds shards hold audio "
                         "codes only (Higgs-Audio v2 uses encode_audio_in_tokens)")
    return HiggsAudioSampleCollator(
        whisper_processor=None, audio_in_token_id=config.audio_in_token_idx,
        audio_out_token_id=config.audio_out_token_idx, pad_token_id=config.pad_token_id,
        audio_stream_bos_id=config.audio_stream_bos_id, audio_stream_eos_id=config.audio_stream_eos_id,
        round_to=8, pad_left=False, encode_whisper_embed=False,
        return_audio_in_tokens=config.encode_audio_in_tokens, audio_num_codebooks=config.audio_num_codebooks,
        use_delay_pattern=config.use_delay_pattern, disable_audio_codes_transform=False,
        mask_audio_out_token_label=True)


MODEL_INPUTS = ("input_ids", "attention_mask", "audio_in_ids", "audio_in_ids_start", "audio_out_ids",
                "audio_out_ids_start", "audio_out_ids_start_group_loc", "label_ids", "label_audio_ids")


def batch_to_inputs(batch, device) -> dict:
    out = {}
    for k in MODEL_INPUTS:
        v = getattr(batch, k)
        out[k] = v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v
    return out
