"""HiggsAudioV2ForConditionalGeneration from a native checkpoint directory, with its text head, activation
checkpointing through the class's own mechanism, and LoRA presets in its module names."""

from __future__ import annotations

from pathlib import Path

import torch

from higgs_ds.checkpoints.checkpoint_dir import CheckpointError

LORA_PRESETS = {
    # attention of every decoder layer + the DualFFN audio path
    "attention_audio_ffn": ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                            "audio_mlp.gate_proj", "audio_mlp.up_proj", "audio_mlp.down_proj"],
    # the two output heads only
    "heads": ["text_lm_head", "audio_lm_head"],
}


def load_native_model(path: str | Path, dtype: torch.dtype = torch.float32, activation_checkpointing: bool = False):
    """The model in directory PATH (transformers-native layout), text head included: training needs it, and the
    class drops `text_lm_head.weight` on load unless built with use_text_head=True. Any key left unloaded is an
    error naming it, not a random weight."""
    from transformers import HiggsAudioV2ForConditionalGeneration

    model, info = HiggsAudioV2ForConditionalGeneration.from_pretrained(
        str(path), use_text_head=True, dtype=dtype, output_loading_info=True)
    problems = {k: sorted(v)[:3] for k, v in info.items() if v}
    if problems:
        raise CheckpointError(f"{path}: the weights do not match HiggsAudioV2ForConditionalGeneration of its "
                              f"config.json ({problems})")
    if activation_checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    return model


def meta_model(native: dict, layers: int | None = None, activation_checkpointing: bool = False):
    """HiggsAudioV2ForConditionalGeneration of the native config NATIVE (with LAYERS decoder layers if given) on the
    meta device in bf16: its shapes without memory or values (the memory model traces it)."""
    from transformers import HiggsAudioV2Config, HiggsAudioV2ForConditionalGeneration
    from transformers.initialization import no_init_weights

    config = HiggsAudioV2Config.from_dict({**native, **({"num_hidden_layers": layers} if layers else {})})
    with no_init_weights(), torch.device("meta"):
        model = HiggsAudioV2ForConditionalGeneration(config, use_text_head=True).to(torch.bfloat16)
    if activation_checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    return model
