"""Model families, one folder each: how a family's model loads and takes LoRA, how a sample becomes its inputs
and labels, and which heads give the loss. Imports from checkpoints and data; nothing from listening or training.

`model_backend(cfg.model)` is the model class a run trains (backend.ModelBackend): the family comes from the
checkpoint's config.json (its layout: Higgs-Audio v2 "boson"/"native", Higgs TTS 3 "tts3"), not from a flag."""

from __future__ import annotations

import importlib

from higgs_ds.config import ConfigError


def model_backend(cfg):
    """The backend of the ModelConfig CFG: its `backend`, for the family of the checkpoint `path` names."""
    from higgs_ds.checkpoints.hub import locate

    return backend_for(cfg.backend, cfg.layout or locate(cfg.path, "model")[1])


def backend_for(spec: str, layout: str = "native"):
    """"native": the family of a checkpoint in LAYOUT (Higgs-Audio v2 on transformers'
    HiggsAudioV2ForConditionalGeneration; Higgs TTS 3 on transformers' Qwen3Model for "tts3"), or
    "package.module:NAME", a ModelBackend defined outside higgs_ds (the tests' boson_multimodal oracle is one)."""
    if spec == "native" and layout == "tts3":
        from higgs_ds.models.higgs_v3.backend import BACKEND

        return BACKEND
    if spec == "native":
        from higgs_ds.models.higgs_v2.backend import BACKEND

        return BACKEND
    if spec == "boson":
        raise ConfigError("model.backend: 'boson' (boson_multimodal's HiggsAudioModel) is no longer a training "
                          "backend; train on 'native' (a run trained on boson's model resumes on it after "
                          "`higgs-ds convert-run RUN`)")
    module, _, name = spec.partition(":")
    if not name:
        raise ConfigError(f"model.backend: {spec!r} is neither 'native' nor 'package.module:NAME'")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"model.backend: {spec!r} does not import: {e}") from None
