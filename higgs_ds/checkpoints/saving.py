"""Checkpoints: DeepSpeed save/resume with client state, per-rank RNG, an atomic `latest`, retention, and the
LoRA adapter written in peft format (fp32 master weights) beside each checkpoint (export.py exports it).

RUN/checkpoints/step00000100/   DeepSpeed's files (trainable weights, optimizer, scheduler) + rank*_rng.pt
                              + adapter/ (adapter_config.json, adapter_model.safetensors)
                              + MANIFEST.json (size and sha256 of every file, checked before a resume) + COMPLETE
RUN/checkpoints/latest        the tag of the newest checkpoint every rank finished writing
RUN/checkpoints/best, RUN/best the best checkpoint under eval.select (a tag, and a symlink to its directory)
"""

from __future__ import annotations

import errno
import json
import logging
import random
import shutil
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from higgs_ds.files import atomic_write, file_sha256, no_space, out_of_space

log = logging.getLogger(__name__)
MANIFEST = "MANIFEST.json"
BEST = "best"  # RUN/checkpoints/best: the tag of the best checkpoint (eval.select), for tools and people
TRAINABLE_STATE = "trainable_state.pt"  # trainable weights and Adam state, whole: no rank's partition
CONVERTED = "CONVERTED.json"  # a checkpoint renamed for another model backend (run_convert.py): loaded by name


class CheckpointDamaged(RuntimeError):
    """No checkpoint to resume from is intact; the message names the file."""


def tag(step: int) -> str:
    return f"step{step:08d}"


def rng_state() -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


ADAM_STATES = ("exp_avg", "exp_avg_sq")


def trainable_state(engine) -> dict[str, dict[str, torch.Tensor]]:
    """Every trainable parameter's fp32 master and Adam moments, whole, whatever the ranks' partitions (a collective
    under ZeRO: every rank must call it)."""
    from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_optimizer_state

    out = {}
    for name, p in engine.module.named_parameters():
        if p.requires_grad:
            full = safe_get_full_fp32_param(p)
            out[name] = {"fp32": (full if full is not None else p.detach().float()).cpu().clone()}
            for key in ADAM_STATES:
                moment = safe_get_full_optimizer_state(p, key)
                if moment is not None:
                    out[name][key] = moment.cpu().clone()
    return out


def optimizer_step_count(engine) -> float | None:
    steps = {float(s["step"]) for s in engine.optimizer.optimizer.state.values() if "step" in s}
    return steps.pop() if len(steps) == 1 else None


def export_adapter(engine, out: Path, state: dict[str, torch.Tensor], is_main: bool) -> None:
    """peft format: adapter_config.json + adapter_model.safetensors (loadable with PeftModel.from_pretrained)."""
    if is_main:
        engine.module.save_pretrained(str(out), state_dict=state, safe_serialization=True)


def save(engine, run_dir: Path, step: int, client_state: dict, keep_last: int, is_main: bool,
         best_step: int | None = None) -> Path:
    """Every rank writes its part; then rank 0 seals it (MANIFEST, COMPLETE), moves `latest` and removes all but the
    newest KEEP_LAST complete checkpoints and the one of BEST_STEP (eval.select's best, which outlives retention)."""
    ckpt_root = run_dir / "checkpoints"
    t = tag(step)
    path = ckpt_root / t
    if is_main and path.exists():
        shutil.rmtree(path)  # a half-written save of the same step from a killed run
    dist.barrier()
    try:
        engine.save_checkpoint(str(ckpt_root), tag=t, client_state=client_state, save_latest=False,
                               exclude_frozen_parameters=True)
        torch.save(rng_state(), path / f"rank{dist.get_rank()}_rng.pt")
        state = trainable_state(engine)
        if is_main:  # what a resume on another number of ranks loads (DeepSpeed's own files are per rank)
            torch.save({"world": dist.get_world_size(), "step": optimizer_step_count(engine), "params": state},
                       path / TRAINABLE_STATE)
        export_adapter(engine, path / "adapter", {n: v["fp32"] for n, v in state.items()}, is_main)
    except (OSError, RuntimeError) as e:  # torch.save reports a full disk as "unexpected pos" or "iostream error"
        if not (no_space(e) or out_of_space(ckpt_root)):
            raise
        shutil.rmtree(path, ignore_errors=True)  # never resumed from: it has no COMPLETE marker
        raise OSError(errno.ENOSPC, f"No space left on device while saving the checkpoint of step {step}",
                      str(path)) from None
    dist.barrier()  # every rank has written its part: only now does this checkpoint become the resume point
    if is_main:
        atomic_write(path / MANIFEST, json.dumps(file_manifest(path), indent=1))
        (path / "COMPLETE").write_text(json.dumps({"step": step}))
        atomic_write(ckpt_root / "latest", t)
        done = sorted(p for p in ckpt_root.glob("step*") if (p / "COMPLETE").exists())
        best = tag(best_step) if best_step is not None else None
        for old in [p for p in done[:-keep_last] if p.name != best]:
            shutil.rmtree(old, ignore_errors=True)
        log.info(f"saved checkpoint {path}")
    dist.barrier()
    return path


def drop_from(run_dir: Path, step: int) -> Path | None:
    """Remove the checkpoints of STEP and later (steps of a diverged run) and point `latest` at the newest complete
    one before them. Rank 0 only. Returns that checkpoint, or None when none is left."""
    root = run_dir / "checkpoints"
    for path in root.glob("step*"):
        if path.name >= tag(step):
            shutil.rmtree(path, ignore_errors=True)
            log.info(f"removed {path}: written after the run had diverged")
    good = sorted(p for p in root.glob("step*") if (p / "COMPLETE").exists())
    best = root / BEST
    if best.is_file() and best.read_text().strip() >= tag(step):  # eval.select chose a dead step
        for marker in (best, run_dir / "best", run_dir / "best.json"):
            marker.unlink(missing_ok=True)
        earlier = client_state_of(good[-1]).get("best", {}) if good else {}
        if earlier.get("step") is not None and (root / tag(earlier["step"])).is_dir():
            mark_best(run_dir, earlier["step"], {"score": earlier["score"], "note": "the best before it diverged"})
        log.info(f"the best checkpoint was written after the run had diverged; best is now "
                 f"{(root / BEST).read_text() if (root / BEST).is_file() else 'none'}")
    if good:
        atomic_write(root / "latest", good[-1].name)
        return good[-1]
    (root / "latest").unlink(missing_ok=True)
    return None


def mark_best(run_dir: Path, step: int, info: dict) -> None:
    """Point RUN/best (a symlink, what `export` and `synthesize --checkpoint` take) and RUN/checkpoints/best at the
    checkpoint of STEP, and write RUN/best.json (step, score, metrics). Rank 0 only, after that checkpoint is
    complete."""
    import os

    ckpt_root = run_dir / "checkpoints"
    atomic_write(ckpt_root / BEST, tag(step))
    link = run_dir / "best"
    tmp = run_dir / f".best.tmp{os.getpid()}"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(Path("checkpoints") / tag(step), target_is_directory=True)
    os.replace(tmp, link)
    atomic_write(run_dir / "best.json", json.dumps({"step": step, "checkpoint": str(ckpt_root / tag(step)),
                                                    "adapter": str(ckpt_root / tag(step) / "adapter"), **info},
                                                   indent=1))


def file_manifest(path: Path) -> dict[str, dict]:
    """Size and sha256 of every file of a checkpoint, by relative path (what resume checks before loading)."""
    return {str(f.relative_to(path)): {"bytes": f.stat().st_size, "sha256": file_sha256(f)}
            for f in sorted(path.rglob("*")) if f.is_file() and f.name not in (MANIFEST, "COMPLETE")}


def damage(path: Path) -> str | None:
    """What is wrong with a checkpoint's files (None: intact, or written before manifests existed)."""
    if not (path / "COMPLETE").exists():
        return "it was not completely written (no COMPLETE marker)"
    if not (path / MANIFEST).is_file():
        return None
    for name, want in json.loads((path / MANIFEST).read_text()).items():
        f = path / name
        if not f.is_file():
            return f"{f} is missing"
        if f.stat().st_size != want["bytes"]:
            return f"{f} has {f.stat().st_size} bytes, {want['bytes']} were written"
        if file_sha256(f) != want["sha256"]:
            return f"{f} does not hold the bytes that were written (sha256 differs)"
    return None


def find_resume(run_dir: Path, resume: str) -> Path | None:
    """The checkpoint to resume from: RESUME itself when it is a path, else (auto) the newest intact one. A damaged
    latest checkpoint is named and skipped for the one before it; every rank reaches the same choice."""
    if resume == "never":
        return None
    if resume != "auto":
        path = Path(resume)
        if (problem := damage(path)) is not None:
            raise CheckpointDamaged(f"cannot resume from {path}: {problem}")
        return path
    root = run_dir / "checkpoints"
    latest = root / "latest"
    if not latest.exists():
        return None
    newest = root / latest.read_text().strip()
    older = sorted((p for p in root.glob("step*") if p.name < newest.name), reverse=True)
    for path in [newest] + older:
        problem = damage(path)
        if problem is None:
            return path
        log.warning(f"checkpoint {path} is damaged: {problem}; trying the one before it")
    raise CheckpointDamaged(f"no intact checkpoint in {root} (the newest, {newest}, is damaged); resume=never "
                            f"starts the run over")


def saved_world(path: Path) -> int:
    """The number of ranks that wrote the checkpoint at PATH (its ZeRO optimizer partitions)."""
    if (path / CONVERTED).is_file():
        return json.loads((path / CONVERTED).read_text())["world"]
    return len(list(path.glob("*zero_pp_rank_*_optim_states.pt"))) or 1


def load(engine, path: Path) -> dict:
    """Restore weights, optimizer, scheduler and this rank's RNG; returns the client state. A checkpoint written on
    another number of ranks, or converted for another model backend, restores its trainable weights and Adam state
    from TRAINABLE_STATE by name, re-partitioned."""
    world = dist.get_world_size()
    same_world = saved_world(path) == world
    if same_world and not (path / CONVERTED).is_file():
        _, client = engine.load_checkpoint(str(path.parent), tag=path.name, load_module_strict=False,
                                           load_optimizer_states=True, load_lr_scheduler_states=True)
    else:
        client = _load_by_name(engine, path, world)
    if client is None:
        raise RuntimeError(f"DeepSpeed could not load the checkpoint {path}")
    rng = path / f"rank{dist.get_rank()}_rng.pt"
    if rng.exists() and same_world:
        set_rng_state(torch.load(rng, weights_only=False))
    return client


def _load_by_name(engine, path: Path, world: int) -> dict:
    from deepspeed.utils import safe_set_full_fp32_param, safe_set_full_optimizer_state

    saved = saved_world(path)
    if not (path / TRAINABLE_STATE).is_file():
        raise CheckpointDamaged(f"{path} was written on {saved} ranks by a version of higgs-ds that kept no "
                                f"{TRAINABLE_STATE}: its optimizer state cannot be re-partitioned for {world} ranks; "
                                f"resume on {saved} ranks, or start over with resume=never")
    state = torch.load(path / TRAINABLE_STATE, map_location="cpu", weights_only=True)
    names = {n for n, p in engine.module.named_parameters() if p.requires_grad}
    if set(state["params"]) != names:
        missing = sorted(names - set(state["params"]))[:1] or sorted(set(state["params"]) - names)[:1]
        raise CheckpointDamaged(f"{path / TRAINABLE_STATE} holds other trainable weights than this model has (e.g. "
                                f"{missing[0]!r}): the LoRA settings differ from the run's")
    _, client = engine.load_checkpoint(str(path.parent), tag=path.name, load_module_strict=False,
                                       load_module_only=True)
    if state["step"] is not None:
        # torch's AdamW creates its state at its first step, and ZeRO links each parameter's fragment of it then:
        # create it on this rank's flat partitions (DeepSpeed 0.19's ZeRO-1/2 optimizer) and link it now
        zero = engine.optimizer
        for flat in zero.single_partition_of_fp32_groups:
            zero.optimizer.state[flat] = {"step": torch.tensor(float(state["step"])),
                                          **{key: torch.zeros_like(flat) for key in ADAM_STATES}}
        zero._hp_optimizer_states_linked = False
        zero._lazy_init_hp_params_optimizer_state()
    for name, p in engine.module.named_parameters():
        if p.requires_grad:
            saved_p = state["params"][name]
            safe_set_full_fp32_param(p, saved_p["fp32"])
            for key in ADAM_STATES:
                if key in saved_p and state["step"] is not None:
                    safe_set_full_optimizer_state(p, saved_p[key], key)
    # what load_module_only leaves out of the engine: its schedule and counters (in every rank's model states)
    engine_state = client_state_of(path)
    engine.lr_scheduler.load_state_dict(engine_state["lr_scheduler"])
    engine.global_steps, engine.skipped_steps = engine_state["global_steps"], engine_state["skipped_steps"]
    engine.global_samples = engine.global_steps * engine.train_batch_size()
    if saved != world:
        log.info(f"{path}: written on {saved} ranks, loaded on {world}: trainable weights and Adam state "
                 f"re-partitioned; each rank's RNG starts from its own seed")
    return client


def client_state_of(ckpt: Path) -> dict:
    """The client state a checkpoint was written with (step, data position, best, config, ...)."""
    states = sorted(ckpt.glob("mp_rank_*_model_states.pt"))
    if not states:
        raise FileNotFoundError(f"{ckpt} holds no DeepSpeed model states (not a checkpoint directory?)")
    return torch.load(states[0], map_location="cpu", weights_only=False)


def trained_backend(config: dict) -> str:
    """The module names a run's weights carry, from its CONFIG (a checkpoint's, as run_config_of gives it):
    "native", or "boson" for a run on boson_multimodal's HiggsAudioModel (runs from before backends existed, with no
    model.backend, and runs on a backend defined outside higgs_ds: the tests' boson oracle)."""
    return "native" if config.get("model", {}).get("backend") == "native" else "boson"


def run_config_of(ckpt: Path) -> dict:
    """The training config a checkpoint was written with (from its client state)."""
    return client_state_of(ckpt)["config"]


def step_dir(path: str | Path) -> Path:
    """The checkpoint a path names: a step directory itself, RUN/best, or a run directory (its latest)."""
    path = Path(path)
    if (path / "checkpoints" / "latest").exists():
        path = path / "checkpoints" / (path / "checkpoints" / "latest").read_text().strip()
    if not (path / "adapter" / "adapter_config.json").is_file():
        raise FileNotFoundError(f"{path / 'adapter'} has no adapter_config.json (is {path} a complete checkpoint "
                                f"or a run directory?)")
    return path.resolve()
