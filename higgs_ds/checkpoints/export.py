"""Exports of a run's checkpoint: its peft adapter, or a merged bf16 model, in boson_multimodal's layout (what
HiggsAudioModel and its serve engine load) or in the transformers-native one (HiggsAudioV2ForConditionalGeneration:
transformers 5.x, vLLM-Omni)."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import torch

from higgs_ds.checkpoints.checkpoint_dir import Checkpoint

from higgs_ds.checkpoints.hub import MODEL_REPO, PINNED_REVISIONS, resolve, resolve_audio_tokenizer
from higgs_ds.checkpoints.saving import run_config_of, step_dir

log = logging.getLogger(__name__)
LAYOUTS = ("boson", "native")


def native_base_of(base: Checkpoint) -> tuple[str, str | None] | None:
    """(name, revision) of the native checkpoint holding BASE's weights: itself when it was native, the hub repo's
    `main` for the pinned boson revision of Boson's model (main is that model, converted), else None."""
    if base.converted:
        return (base.repo_id or str(base.origin)), base.commit
    if base.repo_id == MODEL_REPO and base.commit == PINNED_REVISIONS[MODEL_REPO]:
        return MODEL_REPO, None
    return None


def export(ckpt: str | Path, out: str | Path, merge: bool, base: str | None = None, layout: str = "boson") -> Path:
    """The adapter of checkpoint CKPT copied to OUT, or (MERGE) a full bf16 model with the adapter folded into the
    base weights; in LAYOUT ("boson" or "native")."""
    from higgs_ds.config import ModelConfig

    if layout not in LAYOUTS:
        raise ValueError(f"--layout {layout!r}: choose one of {', '.join(LAYOUTS)}")
    ckpt, out = step_dir(ckpt), Path(out)
    adapter = ckpt / "adapter"
    run_model = run_config_of(ckpt)["model"]
    model_cfg = ModelConfig(path=base or run_model["path"], tokenizer=None if base else run_model["tokenizer"])
    if run_model.get("backend") == "native":
        return export_native_run(ckpt, model_cfg, out, merge, layout)
    if merge:
        return export_merged(adapter, model_cfg, out, layout)
    if layout == "boson":
        shutil.copytree(adapter, out, dirs_exist_ok=True)
        log.info(f"adapter of {ckpt} -> {out} (load: PeftModel.from_pretrained(HiggsAudioModel.from_pretrained("
                 f"{model_cfg.path!r}), {str(out)!r}))")
        return out
    return export_native_adapter(adapter, resolve(model_cfg.path, "model"), out)


def export_native_run(ckpt: Path, model_cfg, out: Path, merge: bool, layout: str) -> Path:
    """Exports of a run trained on the native backend: its adapter is in the native module names already."""
    from higgs_ds.checkpoints.hub import resolve_native_model
    from higgs_ds.checkpoints.native import copy_tokenizer

    if layout != "native":
        raise ValueError(f"{ckpt} was trained on the native backend: export it with --layout native (for boson's "
                         f"layout, `higgs-ds convert --to boson` the merged native export)")
    adapter = ckpt / "adapter"
    if not merge:
        shutil.copytree(adapter, out, dirs_exist_ok=True)
        log.info(f"adapter of {ckpt} -> {out} (load: PeftModel.from_pretrained(HiggsAudioV2ForConditionalGeneration"
                 f".from_pretrained({model_cfg.path!r}), {str(out)!r}))")
        return out
    from peft import PeftModel
    from transformers import HiggsAudioV2ForConditionalGeneration

    base = resolve_native_model(model_cfg.path, model_cfg.tokenizer)
    model = HiggsAudioV2ForConditionalGeneration.from_pretrained(str(base.path), use_text_head=True, dtype="auto")
    merged = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload().to(torch.bfloat16)
    merged.save_pretrained(str(out), safe_serialization=True)
    copy_tokenizer(base.path, out)
    log.info(f"merged {adapter} into {model_cfg.path} -> {out} (bf16, transformers-native layout; load with "
             f"HiggsAudioV2ForConditionalGeneration.from_pretrained, or serve it with vLLM-Omni)")
    return out


def export_native_adapter(adapter: Path, base: Checkpoint, out: Path) -> Path:
    from higgs_ds.checkpoints.native import native_adapter

    native = native_base_of(base)
    if native is None:
        native = (base.spec, None)
        log.warning(f"the base {base.spec} is in boson_multimodal's layout and has no native copy that higgs-ds "
                    f"knows of: the adapter names it as its base. Write one with `higgs-ds convert --to native "
                    f"{base.spec} DIR` and load the adapter onto DIR")
    name, revision = native
    native_adapter(adapter, out, name, revision)
    at = f"{name}@{revision}" if revision else name
    log.info(f"adapter {adapter} -> {out} in the transformers-native layout (load: PeftModel.from_pretrained("
             f"HiggsAudioV2ForConditionalGeneration.from_pretrained({at!r}), {str(out)!r}))")
    return out


def export_merged(adapter: Path, model_cfg, out: Path, layout: str) -> Path:
    from peft import PeftModel

    from higgs_ds.checkpoints.model import load_model, load_tokenizer

    # in the dtype it is stored in (bf16 for hub checkpoints: a 5.77B fp32 copy would not fit in 24 GB); peft adds
    # the fp32 LoRA delta in fp32 before rounding, so this equals an fp32 merge rounded once
    model = load_model(model_cfg, "auto")
    merged = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload().to(torch.bfloat16)
    if layout == "boson":
        merged.save_pretrained(str(out), safe_serialization=True)
        load_tokenizer(model_cfg).save_pretrained(str(out))
        log.info(f"merged {adapter} into {model_cfg.path} -> {out} (bf16; load with HiggsAudioModel.from_pretrained)")
        return out
    from higgs_ds.checkpoints.native import save_native_state

    boson_config = merged.config.to_dict()
    boson_config["torch_dtype"] = "bfloat16"
    tokenizer = resolve(model_cfg.tokenizer or model_cfg.path, "text_tokenizer")
    save_native_state(merged.state_dict(), boson_config, tokenizer.path, out)
    log.info(f"merged {adapter} into {model_cfg.path} -> {out} (bf16, transformers-native layout; load with "
             f"HiggsAudioV2ForConditionalGeneration.from_pretrained, or serve it with vLLM-Omni)")
    return out


def convert(kind: str, src: str, out: str | Path, to: str, tokenizer: str | None = None,
            semantic_model: str | None = None) -> Path:
    """SRC (a model or audio tokenizer, either layout, directory or hub id) written in layout TO into OUT."""
    from higgs_ds.checkpoints import layouts, native, native_codec
    from higgs_ds.checkpoints.checkpoint_dir import check_layout
    from higgs_ds.checkpoints.hub import parse_spec

    out = Path(out)
    if to not in LAYOUTS:
        raise ValueError(f"--to {to!r}: choose one of {', '.join(LAYOUTS)}")
    if kind not in ("model", "audio_tokenizer"):
        raise ValueError(f"--kind {kind!r}: choose model or audio_tokenizer")
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not empty")
    out.mkdir(parents=True, exist_ok=True)
    local = parse_spec(src)[0] is None
    if to == "boson" and local and check_layout(Path(src), kind, src) == "native":
        layouts.convert(kind, Path(src), out)  # straight into OUT, not through the cache
    elif kind == "model":
        checkpoint = resolve(src, "model")  # a native hub checkpoint is converted to boson's layout here
        if to == "boson":
            shutil.copytree(checkpoint.path, out, dirs_exist_ok=True, ignore=shutil.ignore_patterns("SOURCE.json"))
        else:
            native.boson_to_native(checkpoint.path, out, resolve(tokenizer or src, "text_tokenizer").path)
    else:
        checkpoint, semantic = resolve_audio_tokenizer(src, semantic_model)
        if to == "boson":
            shutil.copytree(checkpoint.path, out, dirs_exist_ok=True, ignore=shutil.ignore_patterns("SOURCE.json"))
        elif semantic is None:
            raise ValueError(f"audio tokenizer {src}: no semantic model to put inside the native checkpoint")
        else:
            native_codec.boson_tokenizer_to_native(checkpoint.path, out, semantic.path)
    if kind == "audio_tokenizer" and to == "boson" and (out / native_codec.SEMANTIC_DIR).is_dir():
        log.info(f"its HuBERT is in {out / native_codec.SEMANTIC_DIR}: pass --semantic-model "
                 f"{out / native_codec.SEMANTIC_DIR} wherever this tokenizer is used")
    log.info(f"{kind.replace('_', ' ')} {src} -> {out} ({to} layout)")
    return out
