"""The train loop: build the engine and readers, resume, then one optimizer step after another with evaluations,
saves and stop checks at step boundaries, and a summary at the end. `higgs_ds/train.py` is its command line."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import random
import resource
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from higgs_ds.checkpoints import saving
from higgs_ds.checkpoints.model import apply_lora, load_tokenizer, resolve_model
from higgs_ds.config import ConfigError, TrainConfig, dump_config, to_dict
from higgs_ds.data.loader import (BatchReader, DataPosition, load_train_index, resumed_position,
                                  stream_batches)
from higgs_ds.data.plan import PlanSettings
from higgs_ds.data.shard_index import ShardIndex
from higgs_ds.distributed import StopSignal, all_reduce_sum, deepspeed_config, dist_env, init_distributed
from higgs_ds.listening.listen_eval import ListeningEval
from higgs_ds.listening.report import write_report
from higgs_ds.models import model_backend
from higgs_ds.models.backend import ModelBackend
from higgs_ds.logs import setup_logging
from higgs_ds.training.best import Best, metrics_used, selection_score
from higgs_ds.training.stops import Diverged, DivergenceGuard, check_skips
from higgs_ds.training.evaluation import Evaluators, log_eval, log_listening
from higgs_ds.training.loss import combine
from higgs_ds.training.metrics import Metrics
from higgs_ds.training.preflight import check_model_fits_data, check_step_fits_gpu
from higgs_ds.training.run_dir import own_run_dir, refuse_a_live_run_dir
from higgs_ds.training.stats import StepStats, step_label_counts

log = logging.getLogger(__name__)
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # DataLoader workers fork after the tokenizer ran


class TrainingError(RuntimeError):
    pass


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


def weight_checksums(engine, device) -> list[float]:
    """One float64 checksum of the trainable weights per rank (all ranks must hold the same weights)."""
    import torch.distributed as dist

    local = torch.zeros(1, dtype=torch.float64, device=device)
    for i, p in enumerate(q for q in engine.module.parameters() if q.requires_grad):
        local += (p.detach().double() * (1 + 1e-3 * i)).sum()
    gathered = [torch.zeros_like(local) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, local)
    return [float(t.item()) for t in gathered]


def build(cfg: TrainConfig, de, ds_config_path: str):
    """Model + LoRA (identical init on every rank), data readers, optimizer, scheduler and the DeepSpeed engine."""
    import deepspeed

    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    dtype = torch.bfloat16 if cfg.precision == "bf16" else torch.float32
    backend = model_backend(cfg.model)
    tokenizer = load_tokenizer(cfg.model)
    model = apply_lora(backend.load(cfg.model, dtype), cfg.lora, backend.lora_presets)
    trainable = [p for p in model.parameters() if p.requires_grad]
    n_train, n_total = sum(p.numel() for p in trainable), sum(p.numel() for p in model.parameters())
    log.info(f"model {cfg.model.path}: {n_total / 1e6:.2f}M parameters, {n_train / 1e6:.3f}M trainable (LoRA "
             f"{cfg.lora.preset}, rank {cfg.lora.rank}), {backend.name} backend; world size {de.world}")
    torch.manual_seed(cfg.seed * 1000 + de.rank + 1)  # dropout differs per rank from here on
    collator = backend.make_collator(model.config, cfg.model, cfg.data)
    train_reader = BatchReader(load_train_index(cfg.data.train), tokenizer, collator)
    val_reader = BatchReader(ShardIndex.load(cfg.data.val), tokenizer, collator, cfg.data.max_skipped_samples) \
        if cfg.data.val else None
    optimizer = torch.optim.AdamW(trainable, lr=cfg.optim.lr, betas=tuple(cfg.optim.betas), eps=cfg.optim.eps,
                                  weight_decay=cfg.optim.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg))
    ds_cfg = deepspeed_config(ds_config_path, cfg.data.micro_batch_size, cfg.grad_accum, de.world, cfg.precision,
                              cfg.optim.grad_clip)
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler, config=ds_cfg)
    return engine, optimizer, train_reader, val_reader, backend


def restore(engine, optimizer, cfg: TrainConfig, plan_key: dict, backend: ModelBackend) -> tuple[TrainState, bool]:
    """The state to continue from: the checkpoint `cfg.resume` names (weights, optimizer, RNG restored into the
    engine), or a fresh start. Returns (state, whether a checkpoint was loaded)."""
    ckpt = saving.find_resume(Path(cfg.run_dir), cfg.resume)
    if ckpt is None:
        return TrainState(), False
    trained_on = saving.trained_backend(saving.run_config_of(ckpt))
    if trained_on != backend.name:
        fix = f"convert the run once with `higgs-ds convert-run {cfg.run_dir}`, then resume it" \
            if trained_on == "boson" else f"resume it with model.backend={trained_on}"
        raise ConfigError(f"model.backend: {ckpt} was trained on the {trained_on} backend, whose module names its "
                          f"weights and optimizer state carry; {fix}")
    client = saving.load(engine, ckpt)
    state = TrainState(client["step"], DataPosition(**client["data"]), engine.skipped_steps,
                       client.get("skipped_samples", 0), Best(**client.get("best", {})))
    # the schedule follows the current config (a run may be extended: steps, lr), not the saved one
    engine.lr_scheduler.base_lrs = [cfg.optim.lr] * len(optimizer.param_groups)
    for group in optimizer.param_groups:
        group["lr"] = cfg.optim.lr * lr_lambda(cfg)(state.step)
    state.data = resumed_position(state.data, client.get("plan") or {}, plan_key)
    log.info(f"resumed from {ckpt} at step {state.step} (epoch {state.data.epoch}, batch {state.data.batch})")
    return state, True


def train_step(engine, backend: ModelBackend, stream, state: TrainState, cfg: TrainConfig, device,
               stop: StopSignal, frame_rate: float) -> tuple[dict, bool]:
    """One optimizer step over `grad_accum` micro-batches; returns its metrics row and whether some rank asked to
    stop (every rank gets the same answer). The step's numbers stay on the device until after the optimizer step,
    then come to the host in one read."""
    import torch.distributed as dist

    t0 = time.perf_counter()
    micro = []
    for _ in range(cfg.grad_accum):
        state.data, batch, skipped = next(stream)
        micro.append((batch, skipped))
    t1 = time.perf_counter()
    local_labels, label_totals = step_label_counts([backend.label_counts(b) for b, _ in micro], device)
    text_total, audio_total = label_totals[0], label_totals[1]
    lr = engine.optimizer.param_groups[0]["lr"]  # the rate this step's update uses
    scale = dist.get_world_size() * cfg.grad_accum  # DeepSpeed averages over ranks and divides by accumulation steps
    stats = StepStats(backend.num_codebooks(engine.module.config), device)
    for batch, skipped in micro:
        sums = backend.heads(engine, backend.to_device(batch, device)).sums
        engine.backward(combine(sums, text_total, audio_total, cfg.loss.text_weight, cfg.loss.audio_weight) * scale)
        engine.step()
        stats.add(sums, backend.sizes(batch), frame_rate, skipped)
    state.step += 1
    skipped_now = engine.skipped_steps - state.skipped_steps
    state.skipped_steps = engine.skipped_steps
    grad_norm = engine.get_global_grad_norm()  # a device tensor after a step; None or a float otherwise
    norm_on_device = isinstance(grad_norm, torch.Tensor)
    # riding in the stats' all-reduce: this rank's label counts (their sum is the totals the loss used) and the
    # grad norm, which every rank holds, from rank 0 only (so the sum is exactly its value)
    also = [local_labels]
    if norm_on_device:
        also.append(grad_norm.reshape(1) if dist.get_rank() == 0 else torch.zeros_like(grad_norm).reshape(1))
    total = stats.all_reduced(stop=stop.received is not None, also=tuple(also))
    label_text, label_audio = total.also[:2]
    grad_norm = total.also[2] if norm_on_device else float(grad_norm or 0.0)
    state.skipped_samples += int(total.skipped_samples)
    t2 = time.perf_counter()
    if (total.text_tokens, total.audio_tokens) != (label_text, label_audio):
        raise TrainingError(f"step {state.step}: label counts before the forward ({label_text}, {label_audio}) "
                            f"differ from the loss's ({total.text_tokens}, {total.audio_tokens}): loss normalisation "
                            f"would be wrong")
    row = {"step": state.step, "loss": cfg.loss.text_weight * total.text_loss + cfg.loss.audio_weight *
           total.audio_loss, "text_loss": total.text_loss, "audio_loss": total.audio_loss, "lr": lr,
           "grad_norm": grad_norm, "text_tokens": int(total.text_tokens),
           "audio_tokens": int(total.audio_tokens), "audio_text_token_ratio": total.audio_tokens /
           max(1, total.text_tokens), "tokens_per_s": total.positions / max(1e-9, t2 - t0),
           "audio_seconds_per_s": total.audio_seconds / max(1e-9, t2 - t0), "step_time_s": t2 - t0,
           "data_wait_s": t1 - t0, "epoch": state.data.epoch, "skipped_steps": state.skipped_steps,
           "skipped_now": skipped_now, "skipped_samples": state.skipped_samples, **total.codebook_losses()}
    return row, total.stop > 0


@dataclass
class Run:
    """What one invocation of a run holds while it trains, on every rank."""

    cfg: TrainConfig
    de: object  # distributed.DistEnv
    device: torch.device
    engine: object  # deepspeed.DeepSpeedEngine
    backend: ModelBackend
    evaluators: Evaluators
    plan_key: dict
    state: TrainState
    metrics: Metrics
    frame_rate: float  # audio frames a second in the training shards
    resumed: bool  # from a checkpoint (else a fresh start)
    guard: DivergenceGuard
    saved_step: int = -1  # the step of the last checkpoint written (or resumed from)
    evaluated_step: int = -1  # the step last evaluated

    @property
    def dir(self) -> Path:
        return Path(self.cfg.run_dir)

    def save(self) -> None:
        if self.saved_step != self.state.step:
            saving.save(self.engine, self.dir, self.state.step, self.state.client_state(self.cfg, self.plan_key),
                        self.cfg.keep_last, self.de.is_main, self.state.best.step)
            self.saved_step = self.state.step


def evaluate_step(run: Run, teacher: bool, listen: bool) -> bool:
    """This step's evaluations, then the best checkpoint and patience. Returns whether to stop early; every rank
    gets the same answer."""
    cfg, state, de, evaluators = run.cfg, run.state, run.de, run.evaluators
    run.evaluated_step = state.step
    listen_row = log_listening(evaluators.listening, cfg, state.step, de, run.metrics) if listen else None
    needs_loss = listen and evaluators.val is not None and "loss" in metrics_used(cfg.eval)
    eval_row = log_eval(run.engine, run.backend, evaluators.val, cfg, state.step, de, run.device, run.metrics) \
        if teacher or needs_loss else None
    score = selection_score(cfg.eval, eval_row, listen_row)
    if score is None:
        return False
    score = all_reduce_sum([score if de.is_main else 0.0], run.device)[0]  # rank 0's numbers decide for every rank
    improved, stop = state.best.update(score, state.step, cfg.eval.patience)
    if improved:  # saved after the update: this checkpoint records itself as the best
        run.save()
        if de.is_main:
            saving.mark_best(run.dir, state.step, {"select": cfg.eval.select, "score": score, "eval": eval_row,
                                                   "listening": listen_row})
        log.info(f"step {state.step} is the best so far ({cfg.eval.select} score {score:.4f}): {run.dir / 'best'}")
    elif stop:
        log.info(f"early stop at step {state.step}: {state.best.evals_since} evaluations without a better "
                 f"{cfg.eval.select} score than step {state.best.step}'s {state.best.score:.4f} (eval.patience "
                 f"{cfg.eval.patience})")
    return stop


def start(cfg: TrainConfig, ds_config_path: str, dist_timeout_s: float) -> tuple[Run, object, object]:
    """Checks, the process group, the run directory's lock, the engine and readers, and the state resumed from:
    (the run, its batch stream, the lock on its directory)."""
    de = dist_env()
    setup_logging(de.rank, de.world)  # again here: the submitit launcher calls train() directly
    # hub checkpoints download (or a wrong layout fails) here, before any process group exists; the run records
    # the resolved names (REPO@COMMIT) in config.yaml and checkpoints
    cfg = dataclasses.replace(cfg, model=resolve_model(cfg.model))
    check_model_fits_data(cfg)
    check_step_fits_gpu(cfg, ds_config_path, de)
    refuse_a_live_run_dir(Path(cfg.run_dir), de)
    device = init_distributed(de, dist_timeout_s)
    lock = own_run_dir(Path(cfg.run_dir), de, device)
    if de.is_main:
        dump_config(cfg, Path(cfg.run_dir) / "config.yaml")
    engine, optimizer, train_reader, val_reader, backend = build(cfg, de, ds_config_path)
    listening = ListeningEval(cfg, engine.module.get_base_model(), train_reader.tokenizer, de.rank, de.world,
                              device) if cfg.eval.synth_every else None
    plan = PlanSettings.from_config(cfg.data, de.world, cfg.grad_accum, train_reader.collator.settings.clip_overhead)
    plan_key = plan.resume_key(cfg.data.seed, cfg.data.train)
    state, resumed = restore(engine, optimizer, cfg, plan_key, backend)
    stream = stream_batches(train_reader, cfg.data.seed, de.rank, plan, state.data, cfg.data.num_workers)
    metrics = Metrics(Path(cfg.run_dir), cfg.steps, de.is_main, cfg.progress_bar,
                      resumed_at=state.step if resumed else None)
    uniform = (math.log(n) for n in backend.vocabularies(engine.module.config))  # the losses of a uniform guess
    guard = DivergenceGuard(cfg.diverged_steps, *uniform, cfg.loss.text_weight, cfg.loss.audio_weight)
    run = Run(cfg, de, device, engine, backend, Evaluators(val_reader, listening), plan_key, state, metrics,
              train_reader.frame_rate, resumed, guard, saved_step=state.step if resumed else -1)
    return run, stream, lock


def train(cfg: TrainConfig, ds_config_path: str, dist_timeout_s: float = 600, stop: StopSignal | None = None) -> dict:
    stop = stop or StopSignal()
    run, stream, lock = start(cfg, ds_config_path, dist_timeout_s)
    cfg, state = run.cfg, run.state
    first = last = stopped_by = None
    early_stop, wait, busy, start_step = False, 0.0, 0.0, state.step
    if run.resumed and state.step >= cfg.steps:
        log.info(f"resumed at step {state.step}: the run already has its steps={cfg.steps}, nothing left to train "
                 f"(steps=N with N > {state.step} trains on from here)")
        run.evaluated_step = state.step  # evaluated when it got here
        first, last = previous_rows(run.dir)
    try:
        while state.step < cfg.steps:
            row, stop_agreed = train_step(run.engine, run.backend, stream, state, cfg, run.device, stop,
                                          run.frame_rate)
            if run.evaluators.listening is not None:
                run.evaluators.listening.import_ahead()
            wait, busy = wait + row["data_wait_s"], busy + row["step_time_s"] - row["data_wait_s"]
            first, last = first or row, {**row, "data_wait_share": wait / max(1e-9, wait + busy)}
            run.metrics.log(last)
            if state.step % cfg.log_every == 0 or state.step == cfg.steps:
                run.metrics.progress(last)
            check_skips(cfg, state, row)
            evidence = run.guard.check(row)
            if evidence:
                diverge(run, evidence, first, last)
            teacher, listen = run.evaluators.due(cfg, state.step)
            early_stop = evaluate_step(run, teacher, listen) if teacher or listen else False
            if stop_agreed:  # some rank got SIGUSR1/SIGTERM: all ranks save together, then stop for the requeue
                stopped_by = stop.received or "signal on another rank"
                run.save()
                break
            if early_stop:
                break
            if cfg.save_every and state.step % cfg.save_every == 0 and state.step < cfg.steps:
                run.save()
        if stopped_by is None:
            finish(run)
        summary = summarize(run, stopped_by, first, last)
        summary.update(early_stopped=early_stop, steps_this_run=state.step - start_step)
        if run.de.is_main:
            report(summary, run.dir)
    finally:
        # shut the loader workers down here: after an exception the traceback keeps this frame alive, and at exit
        # multiprocessing would wait forever for workers that block SIGTERM (SLURM signals belong to the trainer)
        stream.close()
        run.metrics.close()
        if lock is not None:
            lock.close()  # releases the run directory
    import torch.distributed as dist

    dist.barrier()
    dist.destroy_process_group()
    return summary


def diverge(run: Run, evidence: str, first: dict | None, last: dict | None) -> None:
    """Stop a run that can no longer learn: the checkpoints of its dead steps go, `latest` stays the last good one,
    nothing is exported, summary.json says why. Every rank gets here at the same step."""
    dead = run.guard.first_dead_step or run.state.step
    summary = summarize(run, "diverged", first, last)
    # step N's loss is the model that update N - 1 left: that update's checkpoint is dead too
    good = saving.drop_from(run.dir, dead - 1) if run.de.is_main else None
    summary.update(checkpoint=str(good) if good else None,
                   diverged={"step": run.state.step, "first_dead_step": dead, "evidence": evidence})
    if run.de.is_main:
        (run.dir / "summary.json").write_text(json.dumps(summary, indent=2))
    resume = f"the last good checkpoint, {good}, stays latest" if good else \
        f"no checkpoint from before step {dead - 1} is left (keep_last x save_every spans fewer steps than " \
        f"diverged_steps + 1)"
    raise Diverged(f"step {run.state.step}: the run diverged and can no longer learn: {evidence}. Nothing was "
                   f"exported and {resume}; lower optim.lr (now {run.cfg.optim.lr:g}) or check the data, then run "
                   f"the command again (diverged_steps={run.cfg.diverged_steps})")


def previous_rows(run_dir: Path) -> tuple[dict | None, dict | None]:
    """The first and last step rows of the summary an earlier invocation of this run wrote (None, None: none)."""
    try:
        summary = json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError):
        return None, None
    return summary.get("first"), summary.get("last")


def finish(run: Run) -> None:
    """The end of a run that was not stopped by a signal: the last evaluations (before the last save, so that
    checkpoint records the best so far), the last checkpoint, and the adapter in RUN/adapter."""
    val, listening = run.evaluators.val, run.evaluators.listening
    if run.evaluated_step != run.state.step and (val is not None or listening is not None):
        evaluate_step(run, val is not None, listening is not None)
    run.save()
    if run.de.is_main:
        final = run.dir / "checkpoints" / saving.tag(run.state.step) / "adapter"
        shutil.copytree(final, run.dir / "adapter", dirs_exist_ok=True)
        if run.backend.carry_files is not None:
            run.backend.carry_files(run.cfg.model, run.dir / "adapter")
        write_report(run.dir)


def summarize(run: Run, stopped_by, first, last) -> dict:
    checksums = weight_checksums(run.engine, run.device)
    if len(set(checksums)) != 1:
        raise TrainingError(f"ranks hold different trainable weights (checksums {checksums}): they desynchronised")
    return {"step": run.state.step, "stopped_by": stopped_by, "first": first, "last": last,
            "checkpoint": str(run.dir / "checkpoints" / saving.tag(run.state.step)),
            "adapter": str(run.dir / "adapter") if stopped_by is None else None,
            "data_wait_share": last["data_wait_share"] if last else 0.0,
            "skipped_samples": run.state.skipped_samples, "rank_weight_checksums": checksums,
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
