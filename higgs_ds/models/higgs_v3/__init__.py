"""Higgs TTS 3 (model_type higgs_multimodal_qwen3): a Qwen3 backbone with one fused audio embedding as its head."""
