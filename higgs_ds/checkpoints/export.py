"""Exports of a run's checkpoint: its peft adapter, or a merged bf16 model, in the transformers-native layout
(HiggsAudioV2ForConditionalGeneration: transformers 5.x, vLLM-Omni) or in boson_multimodal's (what HiggsAudioModel
and its serve engine load). Merging runs on the native model; boson's layout is written by renaming."""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path

import torch

from higgs_ds.checkpoints.checkpoint_dir import Checkpoint

from higgs_ds.checkpoints.hub import MODEL_REPO, PINNED_REVISIONS, locate, resolve, resolve_audio_tokenizer
from higgs_ds.checkpoints.native import copy_tokenizer, save_boson_state
from higgs_ds.checkpoints.native_adapters import boson_adapter, native_adapter
from higgs_ds.checkpoints.saving import run_config_of, step_dir, trained_backend

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


def export(ckpt: str | Path, out: str | Path, merge: bool, base: str | None = None, layout: str = "native") -> Path:
    """The adapter of checkpoint CKPT copied to OUT, or (MERGE) a full bf16 model with the adapter folded into the
    base weights; in LAYOUT ("native" or "boson"). Runs trained on the boson backend (boson's module names) are
    exported too: their adapter is renamed first."""
    from higgs_ds.config import ModelConfig

    if layout not in LAYOUTS:
        raise ValueError(f"--layout {layout!r}: choose one of {', '.join(LAYOUTS)}")
    ckpt, out = step_dir(ckpt), Path(out)
    adapter = ckpt / "adapter"
    run_config = run_config_of(ckpt)
    run_model = run_config["model"]
    model_cfg = ModelConfig(path=base or run_model["path"], tokenizer=None if base else run_model["tokenizer"])
    boson_names = trained_backend(run_config) == "boson"
    if not merge:
        if layout == "boson" and boson_names:
            shutil.copytree(adapter, out, dirs_exist_ok=True)
        elif layout == "boson":
            boson_adapter(adapter, out, model_cfg.path, None)
        elif boson_names:
            return export_native_adapter(adapter, locate(model_cfg.path, "model"), out)
        else:
            shutil.copytree(adapter, out, dirs_exist_ok=True)
        cls = "HiggsAudioModel" if layout == "boson" else "HiggsAudioV2ForConditionalGeneration"
        log.info(f"adapter of {ckpt} -> {out} (load: PeftModel.from_pretrained({cls}.from_pretrained("
                 f"{model_cfg.path!r}), {str(out)!r}))")
        return out
    if boson_names:
        with tempfile.TemporaryDirectory() as tmp:
            native_adapter(adapter, Path(tmp), model_cfg.path, None)
            return export_merged(Path(tmp), model_cfg, out, layout)
    return export_merged(adapter, model_cfg, out, layout)


def export_native_adapter(adapter: Path, base: tuple[Checkpoint, str], out: Path) -> Path:
    """A boson-named adapter for the native model, naming the native checkpoint that holds its base's weights."""
    checkpoint, layout = base
    native = (checkpoint.repo_id or str(checkpoint.path), checkpoint.commit) if layout == "native" else \
        native_base_of(checkpoint)
    if native is None:
        native = (checkpoint.spec, None)
        log.warning(f"the base {checkpoint.spec} is in boson_multimodal's layout and has no native copy that higgs-ds "
                    f"knows of: the adapter names it as its base. Write one with `higgs-ds convert --to native "
                    f"{checkpoint.spec} DIR` and load the adapter onto DIR")
    name, revision = native
    native_adapter(adapter, out, name, revision)
    at = f"{name}@{revision}" if revision else name
    log.info(f"adapter {adapter} -> {out} in the transformers-native layout (load: PeftModel.from_pretrained("
             f"HiggsAudioV2ForConditionalGeneration.from_pretrained({at!r}), {str(out)!r}))")
    return out


def export_merged(adapter: Path, model_cfg, out: Path, layout: str) -> Path:
    """The native base model with the (native-named) ADAPTER merged, in bf16, written in LAYOUT."""
    from peft import PeftModel
    from transformers import HiggsAudioV2ForConditionalGeneration

    from higgs_ds.checkpoints.hub import resolve_native_model

    base = resolve_native_model(model_cfg.path, model_cfg.tokenizer)
    # in the dtype it is stored in (bf16 for hub checkpoints: a 5.77B fp32 copy would not fit in 24 GB); peft adds
    # the fp32 LoRA delta in fp32 before rounding, so this equals an fp32 merge rounded once
    model = HiggsAudioV2ForConditionalGeneration.from_pretrained(str(base.path), use_text_head=True, dtype="auto")
    merged = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload().to(torch.bfloat16)
    if layout == "native":
        merged.save_pretrained(str(out), safe_serialization=True, max_shard_size="5GB")  # the hub's shard size
        copy_tokenizer(base.path, out)
        log.info(f"merged {adapter} into {model_cfg.path} -> {out} (bf16, transformers-native layout; load with "
                 f"HiggsAudioV2ForConditionalGeneration.from_pretrained, or serve it with vLLM-Omni)")
        return out
    native = {**merged.config.to_dict(), "dtype": "bfloat16"}
    save_boson_state({k: v.contiguous() for k, v in merged.state_dict().items()}, native, base.path, out)
    log.info(f"merged {adapter} into {model_cfg.path} -> {out} (bf16, boson_multimodal's layout; load with "
             f"HiggsAudioModel.from_pretrained, or serve it with boson's serve engine)")
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
