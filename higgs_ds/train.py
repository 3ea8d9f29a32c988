"""LoRA fine-tuning of Higgs-Audio v2 with DeepSpeed.

    deepspeed [--num_gpus N] higgs_ds/train.py --deepspeed ds_configs/zero2.json --config CONFIG.yaml [key=value ...]
    torchrun --nproc_per_node N higgs_ds/train.py ...        srun python higgs_ds/train.py ...
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import random
import resource
import shutil
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from higgs_ds import checkpoint
from higgs_ds.best import Best, metrics_used, selection_score
from higgs_ds.checkpoint import CheckpointDamaged
from higgs_ds.collate import check_collator, make_collator
from higgs_ds.config import ConfigError, TrainConfig, dump_config, load_config, to_dict
from higgs_ds.data import BatchReader, DataPosition, load_train_index, stream_batches
from higgs_ds.distributed import StopSignal, all_reduce_sum, deepspeed_config, dist_env, init_distributed
from higgs_ds.evaluation import Evaluators, log_eval, log_listening
from higgs_ds.files import no_space
from higgs_ds.hub import CheckpointError, resolve
from higgs_ds.listening import ListeningEval, check_listening
from higgs_ds.logs import setup_logging
from higgs_ds.loss import IGNORE, combine, token_sums
from higgs_ds.metrics import Metrics
from higgs_ds.model import apply_lora, batch_to_inputs, load_model, load_tokenizer, resolve_model
from higgs_ds.plan import PlanSettings
from higgs_ds.report import write_report
from higgs_ds.sample_format import ShardError, ShardSetError
from higgs_ds.shard_index import ShardIndex
from higgs_ds.stats import StepStats

log = logging.getLogger("higgs_ds.train")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # DataLoader workers fork after the tokenizer ran

EXIT_USER_ERROR = 2  # a wrong config or checkpoint: nothing ran
EXIT_STOPPED = 3  # stopped on a signal after saving a checkpoint: the launcher requeues


class TrainingError(RuntimeError):
    pass


class TooManySkippedSamples(RuntimeError):
    """More unreadable samples than data.max_skipped_samples: every rank raises it at the same step."""


def lr_lambda(cfg: TrainConfig):
    warm, total, floor = cfg.optim.warmup_steps, cfg.steps, cfg.optim.min_lr_ratio

    def f(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        if cfg.optim.schedule == "constant" or total <= warm:
            return 1.0
        progress = min(1.0, (step - warm) / (total - warm))
        decay = 0.5 * (1 + math.cos(math.pi * progress)) if cfg.optim.schedule == "cosine" else 1 - progress
        return floor + (1 - floor) * decay

    return f


@dataclass
class TrainState:
    """What a resume restores besides DeepSpeed's own state: saved in every checkpoint's client state."""

    step: int = 0
    data: DataPosition = field(default_factory=DataPosition)  # the next micro-batch this rank reads
    skipped_steps: int = 0  # non-finite steps skipped so far (DeepSpeed counts them too and restores its count)
    skipped_samples: int = 0  # unreadable samples skipped so far, summed over the ranks
    best: Best = field(default_factory=Best)  # the best evaluation so far under eval.select

    def client_state(self, cfg: TrainConfig, plan_key: dict) -> dict:
        return {"step": self.step, "data": self.data.to_dict(), "skipped_steps": self.skipped_steps,
                "skipped_samples": self.skipped_samples, "best": self.best.to_dict(), "plan": plan_key,
                "config": to_dict(cfg)}


def label_counts(batch) -> tuple[int, int]:
    """Text and audio (frame x codebook) tokens this micro-batch trains on, known before its forward pass."""
    text = int((batch.label_ids != IGNORE).sum())
    audio = 0 if batch.label_audio_ids is None or batch.label_audio_ids.numel() == 0 else \
        int((batch.label_audio_ids[:, 1:] != IGNORE).sum())
    return text, audio


def weight_checksums(engine, device) -> list[float]:
    """One float64 checksum of the trainable weights per rank (all ranks must hold the same weights)."""
    import torch.distributed as dist

    local = torch.zeros(1, dtype=torch.float64, device=device)
    for i, p in enumerate(q for q in engine.module.parameters() if q.requires_grad):
        local += (p.detach().double() * (1 + 1e-3 * i)).sum()
    gathered = [torch.zeros_like(local) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, local)
    return [float(t.item()) for t in gathered]


class RunDirInUse(RuntimeError):
    """Another live run owns this run directory."""


def own_run_dir(run_dir: Path, de, device):
    """Rank 0 takes an exclusive lock on RUN/.lock for as long as the run lives (the OS drops it when the process
    ends, however it ends, so a requeued or restarted job takes over); every rank learns whether it got it."""
    import fcntl

    handle = None
    if de.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        handle = open(run_dir / ".lock", "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            handle.seek(0)
            handle.truncate()
            handle.write(json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "since": time.ctime(),
                                     "slurm_job": os.environ.get("SLURM_JOB_ID")}))
            handle.flush()
        except BlockingIOError:
            handle.seek(0)
            owner = handle.read().strip()
            handle.close()
            handle = None
            log.error(in_use_message(run_dir, owner))
    held = all_reduce_sum([1.0 if handle is not None or not de.is_main else 0.0], device)[0] == de.world
    if not held:
        raise RunDirInUse(f"{run_dir} is in use by another run")
    return handle


def refuse_a_live_run_dir(run_dir: Path, de) -> None:
    """Every rank, before any process group: is RUN/.lock held by a live run? A second job started on the first's
    port would otherwise join the first job's process group before its own rank 0 could ask for the lock."""
    import fcntl

    lock = run_dir / ".lock"
    if not lock.is_file():
        return
    with open(lock) as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)  # released when the file closes
            return
        except BlockingIOError:
            owner = handle.read().strip()
    if de.is_main:
        log.error(in_use_message(run_dir, owner))
    raise RunDirInUse(f"{run_dir} is in use by another run")


def in_use_message(run_dir: Path, owner: str) -> str:
    return (f"error: {run_dir} belongs to another run that is still alive ({owner}); wait for it, stop it, or give "
            f"this run another run_dir")


def check_model_fits_data(cfg: TrainConfig) -> None:
    """The shard sets and the text tokenizer were made for this model (codebooks per frame, codebook size, text
    vocabulary). Checked on config files before any process group exists: a mismatch is one message here, not a
    shape error or a device-side assert inside the model."""
    model_config = json.loads((resolve(cfg.model.path, "model").path / "config.json").read_text())
    codebooks, codebook_size = model_config["audio_num_codebooks"], model_config["audio_codebook_size"]
    sets = [("data.train", p.strip()) for p in cfg.data.train.split(",") if p.strip()]
    for key, root in sets + ([("data.val", cfg.data.val)] if cfg.data.val else []):
        built = ShardIndex.load(root).meta["settings"]
        if built["num_codebooks"] != codebooks:
            raise ConfigError(f"{key}: {root} holds {built['num_codebooks']} codebooks a frame (its build.json), but "
                              f"the model {cfg.model.path} reads {codebooks} (audio_num_codebooks); build the "
                              f"shards with the audio tokenizer that belongs to this model")
        if built.get("codebook_size", 1024) > codebook_size:
            raise ConfigError(f"{key}: {root} holds codes up to {built.get('codebook_size', 1024) - 1} (build.json "
                              f"codebook_size), but the model {cfg.model.path} has audio_codebook_size "
                              f"{codebook_size}")
    check_listening(cfg, model_config)
    vocab, tokens = model_config["text_config"]["vocab_size"], len(load_tokenizer(cfg.model))
    if tokens > vocab:
        raise ConfigError(f"model.tokenizer: {cfg.model.tokenizer or cfg.model.path} has {tokens} tokens, more than "
                          f"the {vocab} of the model's text vocabulary ({cfg.model.path}); use the model's own "
                          f"tokenizer")


def build(cfg: TrainConfig, de, ds_config_path: str):
    """Model + LoRA (identical init on every rank), data readers, optimizer, scheduler and the DeepSpeed engine."""
    import deepspeed

    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    dtype = torch.bfloat16 if cfg.precision == "bf16" else torch.float32
    tokenizer = load_tokenizer(cfg.model)
    model = apply_lora(load_model(cfg.model, dtype), cfg.lora)
    trainable = [p for p in model.parameters() if p.requires_grad]
    n_train, n_total = sum(p.numel() for p in trainable), sum(p.numel() for p in model.parameters())
    log.info(f"model {cfg.model.path}: {n_total / 1e6:.2f}M parameters, {n_train / 1e6:.3f}M trainable (LoRA "
             f"{cfg.lora.preset}, rank {cfg.lora.rank}); world size {de.world}")
    torch.manual_seed(cfg.seed * 1000 + de.rank + 1)  # dropout differs per rank from here on
    collator = make_collator(model.config, cfg.data.collator)
    train_reader = BatchReader(load_train_index(cfg.data.train), tokenizer, collator)
    check_collator(collator, train_reader.samples(np.arange(min(8, len(train_reader.index)))), cfg.data.train)
    val_reader = BatchReader(ShardIndex.load(cfg.data.val), tokenizer, collator, cfg.data.max_skipped_samples) \
        if cfg.data.val else None
    optimizer = torch.optim.AdamW(trainable, lr=cfg.optim.lr, betas=tuple(cfg.optim.betas), eps=cfg.optim.eps,
                                  weight_decay=cfg.optim.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg))
    ds_cfg = deepspeed_config(ds_config_path, cfg.data.micro_batch_size, cfg.grad_accum, de.world, cfg.precision,
                              cfg.optim.grad_clip)
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler, config=ds_cfg)
    return engine, optimizer, train_reader, val_reader


def restore(engine, optimizer, cfg: TrainConfig, plan_key: dict) -> tuple[TrainState, bool]:
    """The state to continue from: the checkpoint `cfg.resume` names (weights, optimizer, RNG restored into the
    engine), or a fresh start. Returns (state, whether a checkpoint was loaded)."""
    ckpt = checkpoint.find_resume(Path(cfg.run_dir), cfg.resume)
    if ckpt is None:
        return TrainState(), False
    client = checkpoint.load(engine, ckpt)
    state = TrainState(client["step"], DataPosition(**client["data"]), engine.skipped_steps,
                       client.get("skipped_samples", 0), Best(**client.get("best", {})))
    # the schedule follows the current config (a run may be extended: steps, lr), not the saved one
    engine.lr_scheduler.base_lrs = [cfg.optim.lr] * len(optimizer.param_groups)
    for group in optimizer.param_groups:
        group["lr"] = cfg.optim.lr * lr_lambda(cfg)(state.step)
    if client.get("plan") != plan_key:
        state.data = DataPosition(state.data.epoch + (1 if state.data.batch else 0), 0)
        log.info(f"data plan changed since the checkpoint ({client.get('plan')} -> {plan_key}): data re-planned "
                 f"from the start of epoch {state.data.epoch}")
    log.info(f"resumed from {ckpt} at step {state.step} (epoch {state.data.epoch}, batch {state.data.batch})")
    return state, True


def train_step(engine, stream, state: TrainState, cfg: TrainConfig, device, stop: StopSignal,
               frame_rate: float) -> tuple[dict, bool]:
    """One optimizer step over `grad_accum` micro-batches; returns its metrics row and whether some rank asked to
    stop (every rank gets the same answer)."""
    import torch.distributed as dist

    t0 = time.perf_counter()
    micro = []
    for _ in range(cfg.grad_accum):
        state.data, batch, skipped = next(stream)
        micro.append((batch, skipped))
    t1 = time.perf_counter()
    counts = [label_counts(b) for b, _ in micro]
    text_total, audio_total = all_reduce_sum([sum(c[0] for c in counts), sum(c[1] for c in counts)], device)
    lr = engine.optimizer.param_groups[0]["lr"]  # the rate this step's update uses
    scale = dist.get_world_size() * cfg.grad_accum  # DeepSpeed averages over ranks and divides by accumulation steps
    stats = StepStats(engine.module.config.audio_num_codebooks)
    for batch, skipped in micro:
        inputs = batch_to_inputs(batch, device)
        sums = token_sums(engine(**inputs), inputs["label_audio_ids"])
        engine.backward(combine(sums, text_total, audio_total, cfg.loss.text_weight, cfg.loss.audio_weight) * scale)
        engine.step()
        stats.add(sums, batch, frame_rate, skipped)
    state.step += 1
    skipped_now = engine.skipped_steps - state.skipped_steps
    state.skipped_steps = engine.skipped_steps
    total = stats.all_reduced(device, stop=stop.received is not None)
    state.skipped_samples += int(total.skipped_samples)
    t2 = time.perf_counter()
    if (total.text_tokens, total.audio_tokens) != (text_total, audio_total):
        raise TrainingError(f"step {state.step}: label counts before the forward ({text_total}, {audio_total}) "
                            f"differ from the loss's ({total.text_tokens}, {total.audio_tokens}): loss normalisation "
                            f"would be wrong")
    row = {"step": state.step, "loss": cfg.loss.text_weight * total.text_loss + cfg.loss.audio_weight *
           total.audio_loss, "text_loss": total.text_loss, "audio_loss": total.audio_loss, "lr": lr,
           "grad_norm": float(engine.get_global_grad_norm() or 0.0), "text_tokens": int(total.text_tokens),
           "audio_tokens": int(total.audio_tokens), "audio_text_token_ratio": total.audio_tokens /
           max(1, total.text_tokens), "tokens_per_s": total.positions / max(1e-9, t2 - t0),
           "audio_seconds_per_s": total.audio_seconds / max(1e-9, t2 - t0), "step_time_s": t2 - t0,
           "data_wait_s": t1 - t0, "epoch": state.data.epoch, "skipped_steps": state.skipped_steps,
           "skipped_now": skipped_now, "skipped_samples": state.skipped_samples, **total.codebook_losses()}
    return row, total.stop > 0


def save(engine, cfg: TrainConfig, state: TrainState, plan_key: dict, is_main: bool) -> Path:
    return checkpoint.save(engine, Path(cfg.run_dir), state.step, state.client_state(cfg, plan_key), cfg.keep_last,
                           is_main, state.best.step)


def evaluate_step(engine, cfg: TrainConfig, state: TrainState, plan_key: dict, evaluators: Evaluators, de, device,
                  metrics: Metrics, saved_step: int, teacher: bool, listen: bool) -> tuple[int, bool]:
    """This step's evaluations, then the best checkpoint and patience. Returns (the step saved last, whether to
    stop early); every rank gets the same answer."""
    listen_row = log_listening(evaluators.listening, cfg, state.step, de, metrics) if listen else None
    needs_loss = listen and evaluators.val is not None and "loss" in metrics_used(cfg.eval)
    eval_row = log_eval(engine, evaluators.val, cfg, state.step, de, device, metrics) if teacher or needs_loss \
        else None
    score = selection_score(cfg.eval, eval_row, listen_row)
    if score is None:
        return saved_step, False
    score = all_reduce_sum([score if de.is_main else 0.0], device)[0]  # rank 0's numbers decide for every rank
    improved, stop = state.best.update(score, state.step, cfg.eval.patience)
    if improved:  # saved after the update: this checkpoint records itself as the best
        if saved_step != state.step:
            save(engine, cfg, state, plan_key, de.is_main)
            saved_step = state.step
        if de.is_main:
            checkpoint.mark_best(Path(cfg.run_dir), state.step, {"select": cfg.eval.select, "score": score,
                                                                 "eval": eval_row, "listening": listen_row})
        log.info(f"step {state.step} is the best so far ({cfg.eval.select} score {score:.4f}): "
                 f"{Path(cfg.run_dir) / 'best'}")
    elif stop:
        log.info(f"early stop at step {state.step}: {state.best.evals_since} evaluations without a better "
                 f"{cfg.eval.select} score than step {state.best.step}'s {state.best.score:.4f} (eval.patience "
                 f"{cfg.eval.patience})")
    return saved_step, stop


def train(cfg: TrainConfig, ds_config_path: str, dist_timeout_s: float = 600, stop: StopSignal | None = None) -> dict:
    de = dist_env()
    setup_logging(de.rank, de.world)  # again here: the submitit launcher calls train() directly
    # hub checkpoints download (or a wrong layout fails) here, before any process group exists; the run records
    # the resolved names (REPO@COMMIT) in config.yaml and checkpoints
    cfg = dataclasses.replace(cfg, model=resolve_model(cfg.model))
    check_model_fits_data(cfg)
    refuse_a_live_run_dir(Path(cfg.run_dir), de)
    device = init_distributed(de, dist_timeout_s)
    run_dir = Path(cfg.run_dir)
    lock = own_run_dir(run_dir, de, device)
    if de.is_main:
        dump_config(cfg, run_dir / "config.yaml")
    stop = stop or StopSignal()
    engine, optimizer, train_reader, val_reader = build(cfg, de, ds_config_path)
    listening = ListeningEval(cfg, engine.module.get_base_model(), train_reader.tokenizer, de.rank, de.world,
                              device) if cfg.eval.synth_every else None
    evaluators = Evaluators(val_reader, listening)
    plan = PlanSettings.from_config(cfg.data, de.world, cfg.grad_accum, train_reader.collator.settings.clip_overhead)
    plan_key = plan.resume_key(cfg.data.seed, cfg.data.train)
    state, resumed = restore(engine, optimizer, cfg, plan_key)
    stream = stream_batches(train_reader, cfg.data.seed, de.rank, plan, state.data, cfg.data.num_workers)
    metrics = Metrics(run_dir, cfg.steps, de.is_main, cfg.progress_bar, resumed_at=state.step if resumed else None)
    first = last = stopped_by = None
    early_stop = False
    saved_step, evaluated_step, wait, busy = (state.step if resumed else -1), -1, 0.0, 0.0
    start_step = state.step
    if resumed and state.step >= cfg.steps:
        log.info(f"resumed at step {state.step}: the run already has its steps={cfg.steps}, nothing left to train "
                 f"(steps=N with N > {state.step} trains on from here)")
        evaluated_step = state.step  # evaluated when it got here
        first, last = previous_rows(run_dir)
    try:
        while state.step < cfg.steps:
            row, stop_agreed = train_step(engine, stream, state, cfg, device, stop, train_reader.frame_rate)
            wait, busy = wait + row["data_wait_s"], busy + row["step_time_s"] - row["data_wait_s"]
            first, last = first or row, {**row, "data_wait_share": wait / max(1e-9, wait + busy)}
            metrics.log(last)
            if state.step % cfg.log_every == 0 or state.step == cfg.steps:
                metrics.progress(last)
            if row["skipped_now"]:
                log.info(f"step {state.step}: non-finite gradients on some rank; every rank skipped the update "
                         f"({state.skipped_steps} skipped so far)")
                if state.skipped_steps > cfg.max_skipped_steps:
                    raise TrainingError(f"{state.skipped_steps} steps had non-finite loss or gradients (max_"
                                        f"skipped_steps={cfg.max_skipped_steps}); lower optim.lr or check the data")
            if state.skipped_samples > cfg.data.max_skipped_samples:
                raise TooManySkippedSamples(
                    f"{state.skipped_samples} samples did not read or decode by step {state.step}, over "
                    f"data.max_skipped_samples={cfg.data.max_skipped_samples} (each is logged as 'skipped corrupt "
                    f"sample' with its shard); check the set with `higgs-ds shards verify {cfg.data.train}`")
            teacher, listen = evaluators.due(cfg, state.step)
            if teacher or listen:
                saved_step, early_stop = evaluate_step(engine, cfg, state, plan_key, evaluators, de, device, metrics,
                                                       saved_step, teacher, listen)
                evaluated_step = state.step
            if stop_agreed:  # some rank got SIGUSR1/SIGTERM: all ranks save together, then stop for the requeue
                stopped_by = stop.received or "signal on another rank"
                if saved_step != state.step:
                    save(engine, cfg, state, plan_key, de.is_main)
                    saved_step = state.step
                break
            if early_stop:
                break
            if cfg.save_every and state.step % cfg.save_every == 0 and state.step < cfg.steps and \
                    saved_step != state.step:
                save(engine, cfg, state, plan_key, de.is_main)
                saved_step = state.step
        if stopped_by is None:
            finish(engine, cfg, state, plan_key, evaluators, de, device, metrics, saved_step, evaluated_step)
        summary = summarize(engine, cfg, state, stopped_by, first, last, device)
        summary["early_stopped"] = early_stop
        summary["steps_this_run"] = state.step - start_step
        if de.is_main:
            report(summary, run_dir)
    finally:
        # shut the loader workers down here: after an exception the traceback keeps this frame alive, and at exit
        # multiprocessing would wait forever for workers that block SIGTERM (SLURM signals belong to the trainer)
        stream.close()
        metrics.close()
        if lock is not None:
            lock.close()  # releases the run directory
    import torch.distributed as dist

    dist.barrier()
    dist.destroy_process_group()
    return summary


def previous_rows(run_dir: Path) -> tuple[dict | None, dict | None]:
    """The first and last step rows of the summary an earlier invocation of this run wrote (None, None: none)."""
    try:
        summary = json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError):
        return None, None
    return summary.get("first"), summary.get("last")


def finish(engine, cfg: TrainConfig, state: TrainState, plan_key: dict, evaluators: Evaluators, de, device,
           metrics: Metrics, saved_step: int, evaluated_step: int) -> None:
    """The end of a run that was not stopped by a signal: the last evaluations (before the last save, so that
    checkpoint records the best so far), the last checkpoint, and the adapter in RUN/adapter."""
    if evaluated_step != state.step and (evaluators.val is not None or evaluators.listening is not None):
        saved_step, _ = evaluate_step(engine, cfg, state, plan_key, evaluators, de, device, metrics, saved_step,
                                      evaluators.val is not None, evaluators.listening is not None)
    if saved_step != state.step:
        save(engine, cfg, state, plan_key, de.is_main)
    if de.is_main:
        final = Path(cfg.run_dir) / "checkpoints" / checkpoint.tag(state.step) / "adapter"
        shutil.copytree(final, Path(cfg.run_dir) / "adapter", dirs_exist_ok=True)
        write_report(Path(cfg.run_dir))


def summarize(engine, cfg: TrainConfig, state: TrainState, stopped_by, first, last, device) -> dict:
    checksums = weight_checksums(engine, device)
    if len(set(checksums)) != 1:
        raise TrainingError(f"ranks hold different trainable weights (checksums {checksums}): they desynchronised")
    run_dir = Path(cfg.run_dir)
    return {"step": state.step, "stopped_by": stopped_by, "first": first, "last": last,
            "checkpoint": str(run_dir / "checkpoints" / checkpoint.tag(state.step)),
            "adapter": str(run_dir / "adapter") if stopped_by is None else None,
            "data_wait_share": last["data_wait_share"] if last else 0.0, "skipped_samples": state.skipped_samples,
            "rank_weight_checksums": checksums,
            "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


def report(summary: dict, run_dir: Path) -> None:
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    if summary["stopped_by"] and os.environ.get("HIGGS_DS_STOP_FILE"):  # slurm/train.sh requeues on it
        Path(os.environ["HIGGS_DS_STOP_FILE"]).write_text(f"{summary['step']}\n")
    if summary["stopped_by"]:
        log.info(f"stopped by {summary['stopped_by']} at step {summary['step']}; checkpoint saved, resume with the "
                 f"same command; {summary['skipped_samples']} unreadable samples skipped")
    else:
        how = f"stopped early at step {summary['step']}" if summary.get("early_stopped") else \
            f"done: {summary['step']} steps"
        best = f"; best checkpoint (eval.select) in {run_dir / 'best'}" if (run_dir / "best").exists() else ""
        log.info(f"{how}; adapter in {run_dir / 'adapter'}{best}; report: {run_dir / 'report.html'}; "
                 f"{summary['skipped_samples']} unreadable samples skipped")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=None, help="YAML training config")
    parser.add_argument("--deepspeed", default=str(Path(__file__).resolve().parents[1] / "ds_configs/zero2.json"),
                        help="DeepSpeed JSON (ZeRO stage, precision, offload)")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--dist-timeout", type=float, default=float(os.environ.get("HIGGS_DS_DIST_TIMEOUT", 600)),
                        help="seconds a collective may wait for a lost rank before the job fails")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. optim.lr=3e-4 steps=2000")
    stop = StopSignal()  # first: a warning signal during start-up must not kill the process
    args = parser.parse_args(argv)
    de = dist_env()
    setup_logging(de.rank, de.world)
    cfg = None
    try:
        cfg = load_config(args.config, args.overrides)  # config errors surface before any process group starts
        summary = train(cfg, args.deepspeed, args.dist_timeout, stop=stop)
    except RunDirInUse:
        return EXIT_USER_ERROR  # rank 0 said whose run it is
    except TooManySkippedSamples as e:  # every rank stops at the same step
        if de.is_main:
            log.error(f"error: {e}")
        return EXIT_USER_ERROR
    except OSError as e:
        if not no_space(e):
            raise
        where = e.filename or (cfg.run_dir if cfg else "the run directory")
        log.error(f"error: {e.strerror or 'No space left on device'}: {where} (free space there, then run the same "
                  f"command again: the run resumes from its last complete checkpoint)")
        return EXIT_USER_ERROR
    except (ConfigError, CheckpointError, CheckpointDamaged, ShardError) as e:  # the user's to fix: a plain message, no traceback
        # the same on every rank, but a sample's shard error may be one rank's
        if de.is_main or (isinstance(e, ShardError) and not isinstance(e, ShardSetError)):
            log.error(f"error: {e}")
        return EXIT_USER_ERROR
    return EXIT_STOPPED if summary["stopped_by"] else 0


if __name__ == "__main__":
    sys.exit(main())
