"""The GPU check's steps, run by bench/gpu_check.sh inside the venv it installs from the wheelhouse, for each model
family (Higgs-Audio v2 and Higgs TTS 3, or those `--families` names):

1. the real-size smoke: build the family's model at its real size (random weights; v2 around the wheelhouse's text
   tokenizer, v3 with the fixture's), train a few steps through higgs_ds/train.py on one device, resume one more,
   export the adapter;
2. bench.gpu at one sequence length, activation checkpointing off and on: tokens/s, MFU, peak memory, and the
   largest micro-batch that fits in 24 and 80 GB.

It writes OUT/gpu_check.json and prints a table. `--device cpu --size tiny` runs the same steps on the tiny models
(the CPU test of the script and the wheelhouse).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FAMILIES = {"v2": "Higgs-Audio v2", "v3": "Higgs TTS 3"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def timed_run(cmd: list, env: dict, log: Path, timeout: float) -> float:
    """Run CMD from the checkout with its output in LOG; its wall time, or an error naming LOG's last lines."""
    t0 = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.run([str(c) for c in cmd], cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT,
                              timeout=timeout)
    if proc.returncode:
        tail = "\n".join(log.read_text().splitlines()[-15:])
        raise RuntimeError(f"{' '.join(map(str, cmd[:4]))}... exited {proc.returncode}; {log}:\n{tail}")
    return time.perf_counter() - t0


def build_model(family: str, size: str, tokenizer: Path, out: Path) -> None:
    from higgs_ds.fixtures import build_full_size_model, build_model as build_tiny, build_v3_model

    if family == "v3":
        build_v3_model(out, real_size=size == "real")  # with the fixture's text tokenizer, which built v3-train
    elif size == "real":
        build_full_size_model(out, tokenizer)
    else:
        build_tiny(out, tokenizer)


def smoke(args, family: str, work: Path, env: dict) -> dict:
    kit = Path(args.wheelhouse) / "smoke"
    model, run = work / "model", work / "run"
    t0 = time.perf_counter()
    build_model(family, args.size, kit / "tokenizer", model)
    row = {"build_model_s": time.perf_counter() - t0}
    data, tokenizer = (kit / "v3-train", model) if family == "v3" else (kit / "train", "none")
    overrides = [f"run_dir={run}", f"model.path={model}", f"model.tokenizer={tokenizer}", f"data.train={data}",
                 "data.val=none", "data.micro_batch_size=1", "data.num_workers=1", "lora.rank=16", "lora.alpha=32",
                 "optim.lr=1e-4", "optim.warmup_steps=1", "log_every=1", "save_every=0", "eval_every=0",
                 "eval.synth_every=0", "progress_bar=false"]

    def train(steps: int, log: str) -> float:
        launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "1", "--master_port",
                  free_port(), "higgs_ds/train.py", "--deepspeed", "ds_configs/zero2.json"]
        return timed_run(launch + overrides + [f"steps={steps}"], env, work / log, args.timeout)

    row["train_s"] = train(args.steps, "train.log")
    row["resume_s"] = train(args.steps + 1, "resume.log")
    resumed = re.search(r"resumed from \S+ at step (\d+)", (work / "resume.log").read_text())
    if not resumed or int(resumed.group(1)) != args.steps:
        raise RuntimeError(f"the second run did not resume from step {args.steps}; see {work / 'resume.log'}")
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    row.update(steps=len(rows), losses=[r["loss"] for r in rows], step_s=[r["step_time_s"] for r in rows])
    row["export_s"] = timed_run([sys.executable, "-m", "higgs_ds.cli", "export", "--checkpoint", run, "--out",
                                 work / "adapter"], env, work / "export.log", args.timeout)
    row["adapter_bytes"] = sum(f.stat().st_size for f in (work / "adapter").rglob("*") if f.is_file())
    summary = json.loads((run / "summary.json").read_text())
    row["peak_host_rss_gb"] = summary.get("peak_rss_gb")
    shutil.rmtree(model, ignore_errors=True)  # 11.5 GB (v2) or 8.9 GB (v3) at real size
    return row


def bench(args, family: str, work: Path, env: dict) -> dict:
    out = work / "bench_gpu.json"
    cmd = [sys.executable, "-m", "bench.gpu", "--family", family, "--size", args.size, "--device", args.device,
           "--seq-lens", args.seq_len, "--batches", "1", "--out", out, "--max-batch", args.max_batch]
    if args.device == "cpu":
        cmd += ["--steps", "1", "--warmup", "1"]
    timed_run(cmd, env, work / "bench_gpu.log", args.timeout)
    return json.loads(out.read_text())


def table(result: dict) -> str:
    lines = [f"GPU check on {result['device']} ({result['size']}), {result['total_s']:.0f} s"]
    for family in result["families"]:
        lines.append(f" {FAMILIES[family]}:")
        s = result.get(family, {}).get("smoke")
        if s:
            lines.append(f"  smoke: model built {s['build_model_s']:.0f} s, train {s['steps'] - 1} steps "
                         f"{s['train_s']:.0f} s, resume +1 {s['resume_s']:.0f} s, export {s['export_s']:.0f} s; "
                         f"losses {', '.join(f'{x:.3f}' for x in s['losses'])}")
        b = result.get(family, {}).get("bench")
        if b:
            lines += bench_rows(b)
    for step, error in result.get("errors", {}).items():
        lines.append(f"  {step} FAILED: {error.splitlines()[0]}")
    return "\n".join(lines)


def bench_rows(b: dict) -> list[str]:
    lines = [f"  {'seq':>5} {'ckpt':>5} {'batch':>5} {'tokens/s':>9} {'MFU':>6} {'peak GB':>8} {'traced':>7}"]
    for c in b["cases"]:
        ckpt = "on" if c["activation_checkpointing"] else "off"
        if c.get("ok"):
            mfu = f"{c['mfu']:.1%}" if c.get("mfu") is not None else "-"
            peak = f"{c['peak_memory_gb']:.1f}" if c.get("peak_memory_gb") is not None else "-"
            traced = f"{c['traced_peak_gb']:.1f}" if c.get("traced_peak_gb") is not None else "-"
            lines.append(f"  {c['seq_len']:>5} {ckpt:>5} {c['micro_batch']:>5} {c['tokens_per_s']:>9.0f} {mfu:>6} "
                         f"{peak:>8} {traced:>7}")
        else:
            lines.append(f"  {c['seq_len']:>5} {ckpt:>5} {c['micro_batch']:>5}  failed: {c.get('error')}")
    for f in b["largest_micro_batch"]:
        lines.append(f"  largest micro-batch at seq {f['seq_len']}, checkpointing "
                     f"{'on' if f['activation_checkpointing'] else 'off'}, {f['memory_gb']:.0f} GB: "
                     f"{f['micro_batch']}")
    return lines


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    p.add_argument("--families", nargs="+", choices=tuple(FAMILIES), default=list(FAMILIES))
    p.add_argument("--size", choices=("real", "tiny"), default=None, help="default: real on cuda, tiny on cpu")
    p.add_argument("--wheelhouse", default=str(REPO / "wheelhouse"), help="holds smoke/{tokenizer,train,v3-train}")
    p.add_argument("--out", default="gpu-check")
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--max-batch", type=int, default=16)
    p.add_argument("--timeout", type=float, default=600, help="seconds one step of the check may take")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.size = args.size or ("real" if args.device == "cuda" else "tiny")
    if args.device == "cpu":
        args.seq_len = min(args.seq_len, 128)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = out / "work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    if args.device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    import torch

    result = {"device": torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu", "size": args.size,
              "families": args.families, "torch": torch.__version__, "errors": {}}
    t0 = time.perf_counter()
    for family in args.families:
        result[family] = {}
        for name, step in (("smoke", smoke), ("bench", bench)):  # one failing step hides no other's figures
            where = work / family / name  # its logs stay for the error to point at
            where.mkdir(parents=True)
            try:
                result[family][name] = step(args, family, where, env)
            except (RuntimeError, subprocess.TimeoutExpired) as e:
                result["errors"][f"{family} {name}"] = str(e)
            result["total_s"] = time.perf_counter() - t0
            (out / "gpu_check.json").write_text(json.dumps(result, indent=1))
    print(table(result))
    return 1 if result["errors"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
