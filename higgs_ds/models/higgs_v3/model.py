"""The Higgs TTS 3 model: transformers' Qwen3Model with the fused audio embedding of 8 x 1026 rows, read back as a
linear layer for the audio logits (tied), built from the checkpoint's config.json."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

MODEL_TYPE = "higgs_multimodal_qwen3"
ROPE_THETA = 1_000_000.0  # the checkpoint's text_config says null; every port uses this

LORA_PRESETS = {
    # attention and MLP of every decoder layer (the audio embedding/head is one tied parameter: see lora.modules_to_save)
    "attention_mlp": ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                      "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"],
}


@dataclass(frozen=True)
class AudioConfig:
    num_codebooks: int = 8
    codebook_size: int = 1026  # 1024 codes, BOC and EOC
    boc: int = 1024
    eoc: int = 1025
    placeholder: int = -100  # the prompt's token id at reference-audio positions

    @classmethod
    def from_config(cls, config: dict) -> "AudioConfig":
        enc = config.get("audio_encoder_config") or {}
        size = int(config.get("audio_codebook_size", enc.get("vocab_size", 1026)))
        return cls(num_codebooks=int(config.get("audio_num_codebooks", enc.get("num_codebooks", 8))),
                   codebook_size=size, boc=int(config.get("audio_boc_token_id", size - 2)),
                   eoc=int(config.get("audio_eoc_token_id", size - 1)),
                   placeholder=int(config.get("audio_token_id", -100)))


def qwen3_config(config: dict):
    """transformers' Qwen3Config for the checkpoint config's text_config (RoPE theta 1e6 where it is null)."""
    from transformers import Qwen3Config

    text = {k: v for k, v in dict(config["text_config"]).items() if k not in ("architectures", "model_type")}
    theta = text.pop("rope_theta", None) or (text.pop("rope_parameters", None) or {}).get("rope_theta") or ROPE_THETA
    return Qwen3Config(**text, rope_parameters={"rope_type": "default", "rope_theta": float(theta)})


class HiggsTTS3(nn.Module):
    """`body` (Qwen3Model: text embedding, decoder layers, norm) and `audio_embedding`, the fused codebook table: a
    frame's codes c_j look up rows j * codebook_size + c_j, summed; the same table, as a linear layer on the hidden
    states, gives the (codebooks, codebook_size) audio logits of the next row."""

    def __init__(self, config: dict):
        super().__init__()
        from transformers import Qwen3Model

        self.config = config
        self.audio = AudioConfig.from_config(config)
        self.body = Qwen3Model(qwen3_config(config))
        self.audio_embedding = nn.Embedding(self.audio.num_codebooks * self.audio.codebook_size,
                                            self.body.config.hidden_size)
        offsets = torch.arange(self.audio.num_codebooks) * self.audio.codebook_size
        self.register_buffer("codebook_offsets", offsets, persistent=False)

    def embed_rows(self, rows: torch.Tensor) -> torch.Tensor:
        """(..., codebooks) delayed-pattern rows -> (..., hidden): the fused embedding summed over codebooks."""
        return self.audio_embedding(rows + self.codebook_offsets).sum(-2)

    def embed(self, input_ids: torch.Tensor, audio_positions: torch.Tensor, audio_rows: torch.Tensor) -> torch.Tensor:
        """The input embeddings of INPUT_IDS (B, W): the text embedding, and at the flat positions AUDIO_POSITIONS
        (where the prompt holds the placeholder id) the fused embedding of AUDIO_ROWS (one row of codes each)."""
        text = self.body.embed_tokens(input_ids.clamp_min(0))
        flat = text.reshape(-1, text.shape[-1])
        flat = flat.index_copy(0, audio_positions, self.embed_rows(audio_rows).to(flat.dtype))
        return flat.view_as(text)

    def hidden_states(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor | None = None,
                      position_ids: torch.Tensor | None = None) -> torch.Tensor:
        return self.body(inputs_embeds=inputs_embeds, attention_mask=attention_mask, position_ids=position_ids,
                         use_cache=False).last_hidden_state

    def audio_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """(..., hidden) -> (..., codebooks, codebook_size), the tied head."""
        logits = nn.functional.linear(hidden, self.audio_embedding.weight)
        return logits.view(*hidden.shape[:-1], self.audio.num_codebooks, self.audio.codebook_size)


def empty_model(config: dict, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu") -> HiggsTTS3:
    """HiggsTTS3 of CONFIG with its weights allocated, uninitialized, in DTYPE on DEVICE: at 4B no fp32 copy is made
    on the way to bf16 (16 GB more than the model)."""
    from transformers.initialization import no_init_weights

    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with no_init_weights(), torch.device(device):
            return HiggsTTS3(config)
    finally:
        torch.set_default_dtype(default)


def meta_model(config: dict, layers: int | None = None, activation_checkpointing: bool = False) -> HiggsTTS3:
    """HiggsTTS3 of CONFIG (with LAYERS decoder layers if given) on the meta device in bf16: its shapes without
    memory or values (the memory model traces it)."""
    if layers:
        config = {**config, "text_config": {**config["text_config"], "num_hidden_layers": layers}}
    model = empty_model(config, torch.bfloat16, "meta")
    if activation_checkpointing:
        model.body.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    return model
