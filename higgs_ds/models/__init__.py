"""Model families, one folder each: how a family's model loads and takes LoRA, how a sample becomes its inputs
and labels, and which heads give the loss. Imports from checkpoints and data; nothing from listening or training.

`backend_for(model.backend)` is the model class a run trains (backend.ModelBackend)."""

from __future__ import annotations

BACKENDS = ("boson", "native")  # Higgs-Audio v2 on boson_multimodal's HiggsAudioModel, or on transformers' class


def backend_for(name: str):
    if name == "boson":
        from higgs_ds.models.boson_v2 import BACKEND
    elif name == "native":
        from higgs_ds.models.higgs_v2.backend import BACKEND
    else:
        raise ValueError(f"model.backend: {name!r} is not one of {', '.join(BACKENDS)}")
    return BACKEND

