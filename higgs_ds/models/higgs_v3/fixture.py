"""A tiny Higgs TTS 3 checkpoint made locally: random weights in the native layout with the real key names, the tied
head copies and a stand-in for the bundled codec's weights, for tests."""

from __future__ import annotations

from pathlib import Path

import torch

from higgs_ds.models.higgs_v3.layout import CODEC_PREFIX, save_checkpoint
from higgs_ds.models.higgs_v3.model import HiggsTTS3, empty_model
from higgs_ds.models.random_weights import fill_random

TINY_CONFIG = {
    "model_type": "higgs_multimodal_qwen3",
    "architectures": ["HiggsMultimodalQwen3ForCausalLM"],
    "text_config": {"model_type": "qwen3", "vocab_size": 512, "hidden_size": 64, "intermediate_size": 128,
                    "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
                    "max_position_embeddings": 4096, "rms_norm_eps": 1e-6, "rope_theta": None,
                    "tie_word_embeddings": True},
    "audio_encoder_config": {"vocab_size": 1026, "num_codebooks": 8, "tie_word_embeddings": True},
    "torch_dtype": "float32",
}

# the architecture at its real size (hub bosonai/higgs-audio-v3-tts-4b, as the ports read its config.json)
REAL_SIZE_CONFIG = {
    **TINY_CONFIG,
    "text_config": {"model_type": "qwen3", "vocab_size": 151936, "hidden_size": 2560, "intermediate_size": 9728,
                    "num_hidden_layers": 36, "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128,
                    "max_position_embeddings": 40960, "rms_norm_eps": 1e-6, "rope_theta": None,
                    "tie_word_embeddings": True},
    "torch_dtype": "bfloat16",
}


def random_model(seed: int = 0, config: dict | None = None, dtype: torch.dtype = torch.float32,
                 device: str = "cpu") -> HiggsTTS3:
    """HiggsTTS3 of CONFIG (default the tiny one) in DTYPE on DEVICE with seeded random weights (fill_random)."""
    return fill_random(empty_model(config or TINY_CONFIG, dtype, device), seed)


def build_checkpoint(out: Path, seed: int = 0, config: dict | None = None, dtype: torch.dtype = torch.float32) -> Path:
    """random_model in OUT (config.json, model.safetensors with a stand-in for the codec's weights)."""
    model = random_model(seed, config, dtype)
    gen = torch.Generator().manual_seed(seed)
    codec = {CODEC_PREFIX + "quantizer.codebook.weight": torch.randn(16, 4, generator=gen),  # carried to exports
             CODEC_PREFIX + "decoder.proj.bias": torch.randn(4, generator=gen)}
    save_checkpoint(model, Path(out), codec)
    return Path(out)
