"""A run trained on the boson backend (boson_multimodal's HiggsAudioModel), converted in place to resume, listen
and export on the native backend (transformers' HiggsAudioV2ForConditionalGeneration).

What changes is the names: every trainable weight, its Adam moments and the adapter carry boson's module names.
Each checkpoint's DeepSpeed model states, `trainable_state.pt` and adapter are renamed; its ZeRO optimizer partitions
are flat buffers in boson's parameter order, so they are moved aside and the resume rebuilds them by name from
`trainable_state.pt` (as a resume on another number of ranks does). The originals are kept in
RUN/checkpoints-boson/, the run's config says model.backend native, and each converted checkpoint holds
CONVERTED.json (from which backend, on how many ranks it was written).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import torch

from higgs_ds.checkpoints.checkpoint_dir import CheckpointError
from higgs_ds.checkpoints.native_adapters import native_adapter, native_adapter_key
from higgs_ds.checkpoints.saving import (CONVERTED, MANIFEST, TRAINABLE_STATE, file_manifest, saved_world,
                                         trained_backend)
from higgs_ds.files import atomic_write

log = logging.getLogger(__name__)
MODEL_STATES = "mp_rank_00_model_states.pt"


def convert_run(run_dir: str | Path) -> list[Path]:
    """Convert every checkpoint of RUN_DIR (and its final adapter) to the native backend; returns the checkpoints
    converted. A run already on the native backend is left as it is."""
    run = Path(run_dir)
    root = run / "checkpoints"
    steps = sorted(p for p in root.glob("step*") if p.is_dir()) if root.is_dir() else []
    if not steps:
        raise CheckpointError(f"{run}: no checkpoints (RUN/checkpoints/step*) to convert")
    if (run / ".lock").exists() and _live(run / ".lock"):
        raise CheckpointError(f"{run} is in use by a live run ({run / '.lock'}); convert it once that run ended")
    done = []
    for step in steps:
        if (step / CONVERTED).is_file() or not (step / MODEL_STATES).is_file():
            continue
        states = torch.load(step / MODEL_STATES, map_location="cpu", weights_only=False)
        if trained_backend(states.get("config", {})) != "boson":
            continue
        _convert_checkpoint(step, states, root.parent / "checkpoints-boson" / step.name)
        done.append(step)
        log.info(f"converted {step} to the native backend")
    if (run / "adapter" / "adapter_config.json").is_file() and not (run / "adapter" / CONVERTED).is_file():
        _convert_adapter_in_place(run / "adapter", run / "checkpoints-boson" / "adapter")
    config = run / "config.yaml"
    if config.is_file():
        import yaml

        cfg = yaml.safe_load(config.read_text())
        cfg.setdefault("model", {})["backend"] = "native"
        atomic_write(config, yaml.safe_dump(cfg, sort_keys=False))
    return done


def _live(lock: Path) -> bool:
    import fcntl

    with open(lock, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return True
        fcntl.flock(f, fcntl.LOCK_UN)
    return False


def _rename(names):
    return {native_adapter_key(k): v for k, v in names.items()}


def _convert_checkpoint(step: Path, states: dict, keep: Path) -> None:
    if not (step / TRAINABLE_STATE).is_file():
        raise CheckpointError(f"{step} has no {TRAINABLE_STATE} (written by an older higgs-ds): its Adam state "
                              f"cannot be carried over by name; start the run over (its adapter exports as it is)")
    world = saved_world(step)
    tmp = step.with_name(f".{step.name}.native")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(step, tmp, ignore=shutil.ignore_patterns("*zero_pp_rank_*_optim_states.pt", "adapter"))
    states["module"] = _rename(states["module"])
    states["param_shapes"] = [type(group)(_rename(group)) for group in states.get("param_shapes") or []]
    states["config"].setdefault("model", {})["backend"] = "native"
    torch.save(states, tmp / MODEL_STATES)
    trainable = torch.load(step / TRAINABLE_STATE, map_location="cpu", weights_only=True)
    trainable["params"] = _rename(trainable["params"])
    torch.save(trainable, tmp / TRAINABLE_STATE)
    model = states["config"]["model"]
    native_adapter(step / "adapter", tmp / "adapter", model["path"], None)
    (tmp / CONVERTED).write_text(json.dumps({"from_backend": "boson", "world": world}, indent=1))
    atomic_write(tmp / MANIFEST, json.dumps(file_manifest(tmp), indent=1))
    keep.parent.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(keep, ignore_errors=True)
    os.replace(step, keep)
    os.replace(tmp, step)


def _convert_adapter_in_place(adapter: Path, keep: Path) -> None:
    base = json.loads((adapter / "adapter_config.json").read_text()).get("base_model_name_or_path")
    tmp = adapter.with_name(".adapter.native")
    shutil.rmtree(tmp, ignore_errors=True)
    native_adapter(adapter, tmp, base, None)
    (tmp / CONVERTED).write_text(json.dumps({"from_backend": "boson"}))
    keep.parent.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(keep, ignore_errors=True)
    os.replace(adapter, keep)
    os.replace(tmp, adapter)
