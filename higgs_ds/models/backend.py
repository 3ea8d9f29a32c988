"""What the train loop asks of a model backend, and what its heads hand back.

A backend is one model class with everything that depends on it: loading (with activation checkpointing), LoRA
presets in its module names, the collator that turns our samples into its batches, and the loss heads. The loop,
evaluation and step statistics only go through these, so they never branch on the backend.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from higgs_ds.models.sums import TokenSums

def base_model(model):
    """The family's model class under a peft wrapper (and a DeepSpeed engine, which hands attributes through), or
    the model itself."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


@dataclass
class HeadOutputs:
    """One micro-batch through the model: its loss sums, and the audio logits at the positions that predict audio
    labels with those labels (for teacher-forced accuracy)."""

    sums: TokenSums
    audio_logits: torch.Tensor | None  # (positions, codebooks, codebook_size)
    audio_targets: torch.Tensor | None  # (positions, codebooks), IGNORE where a codebook is not trained


@dataclass(frozen=True)
class ModelBackend:
    name: str
    load: Callable[..., Any]  # (ModelConfig, dtype) -> model, activation checkpointing applied
    lora_presets: dict[str, list[str]]
    make_collator: Callable[..., Any]  # (model config, ModelConfig, DataConfig) -> collator (`.settings`)
    to_device: Callable[[Any, Any], Any]  # (batch, device) -> batch on the device
    heads: Callable[[Any, Any], HeadOutputs]  # (DeepSpeed engine or model, batch on the device) -> HeadOutputs
    label_counts: Callable[[Any], tuple[int, int]]  # host batch -> (text labels, audio labels)
    sizes: Callable[[Any], tuple[int, int]]  # host batch -> (sequence positions run, audio frames)
    num_codebooks: Callable[[Any], int]  # model config -> codebooks
    # model config -> (text vocabulary, audio codebook size with its stream tokens): the sizes a uniform guess is
    # scored over (the divergence guard's "back at uniform")
    vocabularies: Callable[[Any], tuple[int, int]]
    # (ModelConfig, directory) -> None: files a run's final adapter must carry (Higgs TTS 3: its licence, a NOTICE)
    carry_files: Callable[[Any, Any], None] | None = None


def codebook_hits(out: HeadOutputs, ks: tuple[int, ...]) -> torch.Tensor:
    """(len(ks), codebooks) counts of audio targets among the top-k of their logits (teacher-forced accuracy);
    divide by TokenSums.codebook_tokens."""
    from higgs_ds.data.collate import IGNORE

    if out.audio_logits is None or out.audio_logits.shape[0] == 0:
        n = 0 if out.audio_logits is None else out.audio_logits.shape[1]
        return torch.zeros(len(ks), n, dtype=torch.long)
    valid = out.audio_targets != IGNORE
    top = out.audio_logits.topk(max(ks), dim=-1).indices
    match = top == out.audio_targets.unsqueeze(-1)
    return torch.stack([(match[..., :k].any(-1) & valid).sum(0).cpu() for k in ks])
