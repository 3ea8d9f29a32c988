"""LoRA fine-tuning of Higgs-Audio v2 with DeepSpeed.

    deepspeed [--num_gpus N] higgs_ds/train.py --deepspeed ds_configs/zero2.json --config CONFIG.yaml [key=value ...]
    torchrun --nproc_per_node N higgs_ds/train.py ...        srun python higgs_ds/train.py ...
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import random
import resource
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

from higgs_ds import checkpoint
from higgs_ds.config import ConfigError, TrainConfig, dump_config, load_config, to_dict
from higgs_ds.hub import CheckpointError
from higgs_ds.data import BatchReader, DataPosition, load_train_index, stream_batches
from higgs_ds.plan import PlanSettings, plan_eval
from higgs_ds.distributed import StopSignal, all_reduce_sum, deepspeed_config, dist_env, init_distributed
from higgs_ds.loss import combine, token_sums
from higgs_ds.metrics import Metrics
from higgs_ds.collate import check_collator, make_collator
from higgs_ds.model import apply_lora, batch_to_inputs, load_model, load_tokenizer, resolve_model
from higgs_ds.shards import ShardIndex

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # DataLoader workers fork after the tokenizer ran

EXIT_USER_ERROR = 2  # a wrong config or checkpoint: nothing ran
EXIT_STOPPED = 3  # stopped on a signal after saving a checkpoint: the launcher requeues


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


def plan_key(cfg: TrainConfig, world: int) -> dict:
    """What the data plan depends on: a resume with the same values continues at the exact next batch."""
    d = cfg.data
    return {"world": world, "micro": d.micro_batch_size, "accum": cfg.grad_accum, "seed": d.seed,
            "workers": d.num_workers if d.token_budget else 0, "token_budget": d.token_budget,
            "max_batch_size": d.max_batch_size, "sort_window": d.sort_window, "speaker_cap": d.speaker_cap,
            "speaker_temperature": d.speaker_temperature, "train": d.train, "train_weights": d.train_weights}


def label_counts(batch) -> tuple[int, int]:
    """Text and audio (frame x codebook) tokens this micro-batch trains on, known before its forward pass."""
    text = int((batch.label_ids != -100).sum())
    audio = 0 if batch.label_audio_ids is None or batch.label_audio_ids.numel() == 0 else \
        int((batch.label_audio_ids[:, 1:] != -100).sum())
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


def evaluate(engine, reader: BatchReader, cfg: TrainConfig, rank: int, world: int, device) -> dict:
    engine.eval()
    sums = np.zeros(4)
    plan = plan_eval(len(reader.index), rank, world, cfg.data.micro_batch_size)
    if cfg.eval_batches:
        plan = plan[:cfg.eval_batches]
    with torch.no_grad():
        for rows, weight in plan:
            batch = reader.collate(rows)
            out = engine(**batch_to_inputs(batch, device))
            s = token_sums(out, batch.label_audio_ids.to(device) if batch.label_audio_ids is not None else None)
            if weight:
                sums += [s.text_sum.item(), s.audio_sum.item(), s.text_tokens.item(), s.audio_tokens.item()]
    engine.train()
    text_sum, audio_sum, text_n, audio_n = all_reduce_sum(sums.tolist(), device)
    text, audio = text_sum / max(1, text_n), audio_sum / max(1, audio_n)
    return {"loss": cfg.loss.text_weight * text + cfg.loss.audio_weight * audio, "text_loss": text,
            "audio_loss": audio, "text_tokens": int(text_n), "audio_tokens": int(audio_n)}


def train(cfg: TrainConfig, ds_config_path: str, dist_timeout_s: float = 600, stop: StopSignal | None = None) -> dict:
    import deepspeed

    de = dist_env()
    # hub checkpoints download (or a wrong layout fails) here, before any process group exists; the run records
    # the resolved names (REPO@COMMIT) in config.yaml and checkpoints
    cfg = dataclasses.replace(cfg, model=resolve_model(cfg.model))
    device = init_distributed(de, dist_timeout_s)
    run_dir = Path(cfg.run_dir)

    def log(msg: str) -> None:
        if de.is_main:
            print(f"[higgs-ds {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    if de.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        dump_config(cfg, run_dir / "config.yaml")
    stop = stop or StopSignal()

    # -- build: model + LoRA (identical init on every rank), data, optimizer, engine
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    dtype = torch.bfloat16 if cfg.precision == "bf16" else torch.float32
    tokenizer = load_tokenizer(cfg.model)
    model = apply_lora(load_model(cfg.model, dtype), cfg.lora)
    trainable = [p for p in model.parameters() if p.requires_grad]
    n_train, n_total = sum(p.numel() for p in trainable), sum(p.numel() for p in model.parameters())
    log(f"model {cfg.model.path}: {n_total / 1e6:.2f}M parameters, {n_train / 1e6:.3f}M trainable (LoRA "
        f"{cfg.lora.preset}, rank {cfg.lora.rank}); world size {de.world} on {device.type}")
    torch.manual_seed(cfg.seed * 1000 + de.rank + 1)  # dropout differs per rank from here on
    collator = make_collator(model.config, cfg.data.collator)
    train_reader = BatchReader(load_train_index(cfg.data.train), tokenizer, collator, cfg.data.max_bad_samples)
    check_collator(collator, train_reader.samples(np.arange(min(8, len(train_reader.index)))), cfg.data.train)
    val_reader = BatchReader(ShardIndex.load(cfg.data.val), tokenizer, collator) if cfg.data.val else None
    optimizer = torch.optim.AdamW(trainable, lr=cfg.optim.lr, betas=tuple(cfg.optim.betas), eps=cfg.optim.eps,
                                  weight_decay=cfg.optim.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg))
    ds_cfg = deepspeed_config(ds_config_path, cfg.data.micro_batch_size, cfg.grad_accum, de.world, cfg.precision,
                              cfg.optim.grad_clip)
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler, config=ds_cfg)

    # -- resume
    step, pos, skipped = 0, DataPosition(), 0
    ckpt = checkpoint.find_resume(run_dir, cfg.resume)
    if ckpt is not None:
        client = checkpoint.load(engine, ckpt)
        step, skipped = client["step"], engine.skipped_steps  # DeepSpeed restores its own skip count
        # the schedule follows the current config (a run may be extended: steps, lr), not the saved one
        scheduler.base_lrs = [cfg.optim.lr] * len(optimizer.param_groups)
        for group in optimizer.param_groups:
            group["lr"] = cfg.optim.lr * lr_lambda(cfg)(step)
        pos = DataPosition(**client["data"])
        if client.get("plan") != plan_key(cfg, de.world):
            pos = DataPosition(pos.epoch + (1 if pos.batch else 0), 0)
            log(f"data plan changed since the checkpoint ({client.get('plan')} -> {plan_key(cfg, de.world)}): data "
                f"re-planned from the start of epoch {pos.epoch}")
        log(f"resumed from {ckpt} at step {step} (epoch {pos.epoch}, batch {pos.batch})")

    settings = PlanSettings(world=de.world, micro=cfg.data.micro_batch_size, accum=cfg.grad_accum,
                            workers=cfg.data.num_workers, token_budget=cfg.data.token_budget,
                            max_batch_size=cfg.data.max_batch_size, window=cfg.data.sort_window,
                            speaker_cap=cfg.data.speaker_cap, speaker_temperature=cfg.data.speaker_temperature,
                            source_weights=tuple(cfg.data.train_weights))
    stream = stream_batches(train_reader, cfg.data.seed, de.rank, settings, pos, cfg.data.num_workers, log=log)
    metrics = Metrics(run_dir, cfg.steps, de.is_main, cfg.progress_bar)
    try:

        def save() -> Path:
            state = {"step": step, "data": pos.to_dict(), "plan": plan_key(cfg, de.world), "config": to_dict(cfg)}
            return checkpoint.save(engine, run_dir, step, state, cfg.keep_last, de.is_main, log)

        def run_eval(label: str) -> None:
            ev = evaluate(engine, val_reader, cfg, de.rank, de.world, device)
            metrics.log({"step": step, "split": "eval", **ev})
            log(f"{label}: loss {ev['loss']:.4f} text {ev['text_loss']:.4f} audio {ev['audio_loss']:.4f}")

        # -- the loop: one optimizer step per iteration
        first_loss = last_row = None
        data_wait = compute = 0.0
        stopped_by = None
        saved_step = step if ckpt is not None else -1
        evaluated_step = -1
        while step < cfg.steps:
            t0 = time.perf_counter()
            micro = []
            for _ in range(cfg.grad_accum):
                pos, batch = next(stream)
                micro.append(batch)
            t1 = time.perf_counter()
            counts = [label_counts(b) for b in micro]
            text_total, audio_total = all_reduce_sum([sum(c[0] for c in counts), sum(c[1] for c in counts)], device)
            lr = optimizer.param_groups[0]["lr"]  # the rate this step's update uses
            scale = de.world * cfg.grad_accum  # DeepSpeed averages over ranks and divides by accumulation steps
            acc = np.zeros(4 + 16 + 2)
            for batch in micro:
                inputs = batch_to_inputs(batch, device)
                out = engine(**inputs)
                s = token_sums(out, inputs["label_audio_ids"])
                loss = combine(s, text_total, audio_total, cfg.loss.text_weight, cfg.loss.audio_weight)
                engine.backward(loss * scale)
                engine.step()
                ncb = len(s.codebook_sums)
                acc[:4] += [s.text_sum.item(), s.audio_sum.item(), s.text_tokens.item(), s.audio_tokens.item()]
                acc[4:4 + ncb] += s.codebook_sums.cpu().numpy()
                acc[12:12 + ncb] += s.codebook_tokens.cpu().numpy()
                audio_steps = sum(0 if x is None else x.shape[-1] for x in (batch.audio_in_ids, batch.audio_out_ids))
                acc[20] += int(batch.attention_mask.sum()) + audio_steps
                acc[21] += audio_steps / 25
            step += 1
            skipped_now = engine.skipped_steps - skipped
            skipped = engine.skipped_steps
            red = np.asarray(all_reduce_sum(acc.tolist() + [1.0 if stop.received else 0.0], device))
            t2 = time.perf_counter()
            data_wait, compute = data_wait + (t1 - t0), compute + (t2 - t1)
            if (red[2], red[3]) != (text_total, audio_total):
                raise TrainingError(f"step {step}: label counts before the forward ({text_total}, {audio_total}) differ "
                                    f"from the loss's ({red[2]}, {red[3]}): loss normalisation would be wrong")
            text_loss, audio_loss = red[0] / max(1, red[2]), red[1] / max(1, red[3])
            row = {"step": step, "loss": cfg.loss.text_weight * text_loss + cfg.loss.audio_weight * audio_loss,
                   "text_loss": text_loss, "audio_loss": audio_loss, "lr": lr,
                   "grad_norm": float(engine.get_global_grad_norm() or 0.0), "text_tokens": int(red[2]),
                   "audio_tokens": int(red[3]), "audio_text_token_ratio": red[3] / max(1, red[2]),
                   "tokens_per_s": red[20] / max(1e-9, t2 - t0), "audio_seconds_per_s": red[21] / max(1e-9, t2 - t0),
                   "step_time_s": t2 - t0, "data_wait_s": t1 - t0, "data_wait_share": data_wait / max(1e-9, data_wait + compute),
                   "epoch": pos.epoch, "skipped_steps": skipped}
            row.update({f"audio_loss_cb{i}": red[4 + i] / max(1, red[12 + i]) for i in range(8) if red[12 + i]})
            first_loss = first_loss or row
            last_row = row
            metrics.log(row)
            if step % cfg.log_every == 0 or step == cfg.steps:
                metrics.progress(row)
            if skipped_now:
                log(f"step {step}: non-finite gradients on some rank; every rank skipped the update "
                    f"({skipped} skipped so far)")
                if skipped > cfg.max_skipped_steps:
                    raise TrainingError(f"{skipped} steps had non-finite loss or gradients (max_skipped_steps="
                                        f"{cfg.max_skipped_steps}); lower optim.lr or check the data")
            if val_reader is not None and cfg.eval_every and step % cfg.eval_every == 0:
                run_eval(f"eval at step {step}")
                evaluated_step = step
            if red[-1] > 0:  # some rank got SIGUSR1/SIGTERM: all ranks save together, then stop for the requeue
                stopped_by = stop.received or "signal on another rank"
                save()
                saved_step = step
                break
            if cfg.save_every and step % cfg.save_every == 0 and step < cfg.steps:
                save()
                saved_step = step

        if stopped_by is None:
            if saved_step != step:
                save()
            if val_reader is not None and evaluated_step != step:
                run_eval("final eval")
            if de.is_main:
                final = run_dir / "checkpoints" / checkpoint.tag(step) / "adapter"
                shutil.copytree(final, run_dir / "adapter", dirs_exist_ok=True)
        checksums = weight_checksums(engine, device)
        if len(set(checksums)) != 1:
            raise TrainingError(f"ranks hold different trainable weights (checksums {checksums}): they desynchronised")
        summary = {"step": step, "stopped_by": stopped_by, "first": first_loss, "last": last_row,
                   "checkpoint": str(run_dir / "checkpoints" / checkpoint.tag(step)),
                   "adapter": str(run_dir / "adapter") if stopped_by is None else None,
                   "data_wait_share": data_wait / max(1e-9, data_wait + compute), "rank_weight_checksums": checksums,
                   "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}
        if de.is_main:
            (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
            if stopped_by and os.environ.get("HIGGS_DS_STOP_FILE"):  # slurm/train.sh requeues on it
                Path(os.environ["HIGGS_DS_STOP_FILE"]).write_text(f"{step}\n")
            log(f"stopped by {stopped_by} at step {step}; checkpoint saved, resume with the same command"
                if stopped_by else f"done: {step} steps; adapter in {run_dir / 'adapter'}")
    finally:
        # shut the loader workers down here: after an exception the traceback keeps this frame alive, and at exit
        # multiprocessing would wait forever for workers that block SIGTERM (SLURM signals belong to the trainer)
        stream.close()
        metrics.close()
    import torch.distributed as dist

    dist.barrier()
    dist.destroy_process_group()
    return summary


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
    try:
        cfg = load_config(args.config, args.overrides)  # config errors surface before any process group starts
        summary = train(cfg, args.deepspeed, args.dist_timeout, stop=stop)
    except (ConfigError, CheckpointError) as e:  # the user's to fix: one plain message, from rank 0 only
        if dist_env().is_main:
            print(f"[higgs-ds] error: {e}", file=sys.stderr, flush=True)
        return EXIT_USER_ERROR
    return EXIT_STOPPED if summary["stopped_by"] else 0


if __name__ == "__main__":
    sys.exit(main())
