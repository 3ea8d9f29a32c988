"""Resolve a run's model and text tokenizer, load the tokenizer, and wrap a model with peft LoRA."""

from __future__ import annotations

import dataclasses
import re

from higgs_ds.checkpoints.hub import locate, resolve
from higgs_ds.config import ConfigError, LoraConfig, ModelConfig


def resolve_model(cfg: ModelConfig) -> ModelConfig:
    """CFG with the model and text tokenizer named as resolved (`REPO@COMMIT` or a directory), downloading hub
    checkpoints and checking their layout on the way (nothing converted): what a run records to be reproducible."""
    model, layout = locate(cfg.path, "model")
    tokenizer, _ = locate(cfg.tokenizer or cfg.path, "text_tokenizer")
    return dataclasses.replace(cfg, path=model.spec, tokenizer=tokenizer.spec, layout=layout)


def load_tokenizer(cfg: ModelConfig):
    from transformers import AutoTokenizer

    # a native tokenizer's copy with its config readable by transformers 4.x too (the oracle venv): files only
    return AutoTokenizer.from_pretrained(str(resolve(cfg.tokenizer or cfg.path, "text_tokenizer").path))


def lora_targets(cfg: LoraConfig, presets: dict[str, list[str]]) -> list[str]:
    """The module-name suffixes lora.preset names among the family's PRESETS ("default": the first)."""
    if cfg.preset == "custom":
        return cfg.targets
    if cfg.preset == "default":
        return next(iter(presets.values()))
    if cfg.preset not in presets:
        raise ConfigError(f"lora.preset: {cfg.preset!r} is not a preset of this model's family (it has "
                          f"{', '.join(presets)}; or default, custom)")
    return presets[cfg.preset]


def apply_lora(model, cfg: LoraConfig, presets: dict[str, list[str]]):
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
