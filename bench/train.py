"""Training figures on CPU: tiny-model step time and tokens/s, our full loop vs a bare DeepSpeed loop on the same
batches, the share of step time spent waiting for data, checkpoint save/resume time and bytes.

Our loop / bare runs our loop with the loader on the training thread (data.num_workers=0) against the bare loop on
pre-collated batches: what our step costs beyond engine(); backward(); step(), reading and collating included. A
loader worker process is measured apart, ours with one worker against the bare loop fed by one worker: on these
2 cores a worker slows the model's own forward and backward by 8-17% whatever it does (it uses 2% of a core; a
spawned or forkserver worker, or one compute thread with a core left free, shows the same), which a GPU host, with
its loader on cores of its own, does not see.

Run: .venv/bin/python -m bench.train
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from bench.common import PRECISION, REPO, WORK, fixtures, table

STEPS = 200  # 800 samples: crosses two epoch boundaries of the 360-sample set
ROUNDS = 3  # our loop and the bare one alternate: a shared machine's slow spells hit both, and each keeps its best


def overrides(fx: Path, shards: Path, run: Path, **kv) -> list[str]:
    base = {"run_dir": run, "model.path": fx / "model", "model.tokenizer": fx / "tokenizer", "data.train": shards,
            "steps": STEPS, "log_every": 10, "data.seed": 0, "save_every": 0, "data.micro_batch_size": 4,
            "lora.rank": 8, "optim.warmup_steps": 5, "progress_bar": False, "precision": PRECISION}
    base.update(kv)
    return [f"{k}={v}" for k, v in base.items()]


def our_loop(fx: Path, shards: Path, resume: bool, workers: int = 0) -> dict:
    run = WORK / "bench-run"
    shutil.rmtree(run, ignore_errors=True)
    env = {**os.environ, "MASTER_PORT": "29611"}
    subprocess.run([Path(sys.executable).parent / "torchrun", "--nproc_per_node", "1", "--master_port", "29611",
                    "higgs_ds/train.py", "--deepspeed", "ds_configs/zero2.json",
                    *overrides(fx, shards, run, **{"data.num_workers": workers})],
                   cwd=REPO, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    steady = rows[5:]  # after warm-up
    ckpt = run / "checkpoints" / f"step{STEPS:08d}"
    figures = {"step_s": float(np.median([r["step_time_s"] for r in steady])),
               "tokens_per_s": float(np.median([r["tokens_per_s"] for r in steady])),
               "data_wait_share": sum(r["data_wait_s"] for r in steady) / sum(r["step_time_s"] for r in steady),
               "first_step_wait_s": rows[0]["data_wait_s"],
               "ckpt_bytes": sum(f.stat().st_size for f in ckpt.rglob("*") if f.is_file())}
    if not resume:
        return figures
    t0 = time.perf_counter()
    subprocess.run([Path(sys.executable).parent / "torchrun", "--nproc_per_node", "1", "--master_port", "29612",
                    "higgs_ds/train.py", "--deepspeed", "ds_configs/zero2.json",
                    *overrides(fx, shards, run, steps=STEPS + 1)], cwd=REPO, env={**env, "MASTER_PORT": "29612"},
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return {**figures, "resumed_run_s": time.perf_counter() - t0}


def bare_loop_isolated(fed: bool = False) -> dict:
    """bare_loop in a fresh process, as our loop runs (one process group each)."""
    out = subprocess.run([sys.executable, "-m", "bench.train", "--bare", *(["--fed"] if fed else [])], cwd=REPO,
                         env=os.environ, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def bare_loop(fx: Path, shards: Path, fed: bool = False) -> dict:
    """The same model, LoRA, optimizer, engine and batches; just the heads' loss, `engine.backward(); engine.step()`.
    FED: each step's batch comes from our loader with one worker process instead of a pre-collated list."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT="29613", RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    import deepspeed
    import torch

    from higgs_ds.checkpoints.model import apply_lora, load_tokenizer
    from higgs_ds.config import load_config
    from higgs_ds.data.loader import BatchReader, DataPosition, stream_batches
    from higgs_ds.data.plan import PlanSettings, plan_epoch
    from higgs_ds.data.shard_index import ShardIndex
    from higgs_ds.distributed import deepspeed_config, dist_env, init_distributed
    from higgs_ds.models import model_backend
    from higgs_ds.training.loss import combine

    cfg = load_config(None, overrides(fx, shards, WORK / "bare"))
    device = init_distributed(dist_env(), 600)
    torch.manual_seed(0)
    backend = model_backend(cfg.model)
    dtype = torch.bfloat16 if PRECISION == "bf16" else torch.float32
    model = apply_lora(backend.load(cfg.model, dtype), cfg.lora, backend.lora_presets)
    reader = BatchReader(ShardIndex.load(shards), load_tokenizer(cfg.model),
                         backend.make_collator(model.config, cfg.model, cfg.data))
    plan = plan_epoch(reader.index.rows, 0, 0, PlanSettings(world=1, micro=4))
    batches = [reader.collate(b) for b in plan.batches[0]]
    stream = stream_batches(reader, cfg.data.seed, 0, PlanSettings(world=1, micro=4), DataPosition(), 1) if fed \
        else None
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    ds = deepspeed_config(str(REPO / "ds_configs/zero2.json"), 4, 1, 1, PRECISION, 1.0)
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=opt, config=ds)
    times = []
    for k in range(STEPS):
        t0 = time.perf_counter()
        batch = next(stream)[1] if fed else batches[k % len(batches)]
        s = backend.heads(engine, backend.to_device(batch, device)).sums
        engine.backward(combine(s, float(s.text_tokens), float(s.audio_tokens), 1.0, 1.0))
        engine.step()
        times.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    engine.save_checkpoint(str(WORK / "bare-ckpt"), tag="full")  # frozen weights included: the full-checkpoint size
    save_s = time.perf_counter() - t0
    full_bytes = sum(f.stat().st_size for f in (WORK / "bare-ckpt" / "full").rglob("*") if f.is_file())
    t0 = time.perf_counter()
    engine.save_checkpoint(str(WORK / "bare-ckpt"), tag="adapter", exclude_frozen_parameters=True)
    save_adapter_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    engine.load_checkpoint(str(WORK / "bare-ckpt"), tag="adapter", load_module_strict=False)
    load_s = time.perf_counter() - t0
    shutil.rmtree(WORK / "bare-ckpt", ignore_errors=True)
    return {"step_s": float(np.median(times[5:])), "full_ckpt_bytes": full_bytes, "save_full_s": save_s,
            "save_adapter_s": save_adapter_s, "load_adapter_s": load_s}


def shard_set(fx: Path) -> Path:
    from bench.loader import build_set
    from bench.common import speech

    return build_set(fx, speech())


def main() -> list[tuple[str, str, str]]:
    fx = fixtures()
    shards = shard_set(fx)
    rounds = []
    for k in range(ROUNDS):  # (ours, bare) on the training thread, then (ours, bare) fed by one loader worker
        rounds.append((our_loop(fx, shards, resume=k == 0), bare_loop_isolated(),
                       our_loop(fx, shards, resume=False, workers=1), bare_loop_isolated(fed=True)))
    best = [min(r[i]["step_s"] for r in rounds) for i in range(4)]
    ours, bare = {**rounds[0][0], "step_s": best[0]}, {**rounds[0][1], "step_s": best[1]}
    ours_w, fed = {**rounds[0][2], "step_s": best[2]}, best[3]

    def spread(i: int, j: int) -> str:
        return " / ".join(f"{r[i]['step_s'] * 1000:.0f}:{r[j]['step_s'] * 1000:.0f}" for r in rounds)

    return [
        ("tiny model step, CPU", f"{ours['step_s'] * 1000:.0f} ms", f"1 rank, micro-batch 4, {PRECISION} ZeRO-2; "
         f"{ours['tokens_per_s']:.0f} tokens/s"),
        ("our loop / bare loop", f"{ours['step_s'] / bare['step_s']:.2f}x", f"median step {ours['step_s'] * 1000:.0f}"
         f" vs {bare['step_s'] * 1000:.0f} ms, best of {ROUNDS} alternating rounds (ours:bare ms {spread(0, 1)}); "
         f"ours reads and collates on the training thread, bare runs engine(); backward(); step() on pre-collated "
         f"batches"),
        ("  with one loader worker: ours / bare fed by it", f"{ours_w['step_s'] / fed:.2f}x",
         f"{ours_w['step_s'] * 1000:.0f} vs {fed * 1000:.0f} ms (ours:bare ms {spread(2, 3)}); the worker itself: "
         f"bare fed by it / bare {fed / bare['step_s']:.2f}x"),
        ("data wait share", f"{ours_w['data_wait_share']:.2%}", f"of step time after step 5, 1 loader worker "
         f"(steps cross {STEPS * 4 // 360} epoch boundaries; the first step waits {ours_w['first_step_wait_s']:.1f} "
         f"s for the worker to start); {ours['data_wait_share']:.2%} reading on the training thread"),
        ("checkpoint save", f"{bare['save_adapter_s'] * 1000:.0f} ms", f"trainable only; full (frozen incl.) "
         f"{bare['save_full_s'] * 1000:.0f} ms"),
        ("checkpoint resume", f"{bare['load_adapter_s'] * 1000:.0f} ms", f"load_checkpoint; a whole resumed run of 1 step "
         f"incl. start-up: {ours['resumed_run_s']:.0f} s"),
        ("checkpoint bytes", f"{ours['ckpt_bytes'] / 1e6:.1f} MB", f"adapter-only (+ optimizer, + peft export) vs "
         f"{bare['full_ckpt_bytes'] / 1e6:.1f} MB with frozen weights"),
    ]


if __name__ == "__main__":
    WORK.mkdir(parents=True, exist_ok=True)
    if sys.argv[1:2] == ["--bare"]:
        fx = fixtures()
        print(json.dumps(bare_loop(fx, shard_set(fx), fed=sys.argv[2:] == ["--fed"])))
    else:
        table("training", main())
