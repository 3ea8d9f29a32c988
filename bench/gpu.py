"""GPU benchmark: a model family's architecture at full size (Higgs-Audio v2, 5.77B; `--family v3`: Higgs TTS 3,
4.04B; random weights, no download) with LoRA under DeepSpeed ZeRO-2 bf16, activation checkpointing on/off,
sequence lengths 1024-4096: tokens/s, model-FLOPs utilisation, peak memory, and the largest micro-batch that fits in
24 GB and in 80 GB.

    python -m bench.gpu                          # on a GPU machine (one GPU)
    python -m bench.gpu --family v3              # Higgs TTS 3
    python -m bench.gpu --size tiny --device cpu --seq-lens 128 --batches 1 2 --steps 2   # a CPU smoke run

Every case runs in a fresh process; one that fails or runs out of memory is recorded as such and the rest go on.

FLOPs (bench/flops.py, checked against torch's FlopCounterMode): every matrix product forward and backward of the
step as it runs (a text position through the text FFN, an audio one through the audio FFN), attention counted
causal over each sample's length, the heads at the positions with a label. MFU divides that by the step time.
`head_flops_saved_per_token` is what the heads would add at every other position, as a step computed them before
they ran only where labels are: the FLOPs that step wasted (for v3, its tied audio head's).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import torch

from higgs_ds.fixtures import V2_ARCH, random_model

TINY_ARCH = dict(V2_ARCH, text_config=dict(V2_ARCH["text_config"], vocab_size=512, hidden_size=64,
                                           intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                           num_key_value_heads=2, head_dim=16, rope_scaling=None),
                 audio_ffn_hidden_size=64, audio_ffn_intermediate_size=128, audio_dual_ffn_layers=[0, 1],
                 audio_in_token_idx=500, audio_out_token_idx=501, pad_token_id=502, audio_out_bos_token_id=503,
                 audio_eos_token_id=504)
TINY_IDS = {"<|AUDIO|>": 500, "<|audio_eos|>": 504, "<|reserved_special_token_6|>": 505, "<|eot_id|>": 506}
RESULT = "RESULT "  # the prefix of the line a case process reports on


def arch_settings(arch: dict, native: dict, ids: dict[str, int] | None = None):
    """The collator settings of ARCH (boson-style) / NATIVE, with IDS the text tokenizer's audio token ids
    (default: ARCH's)."""
    from higgs_ds.models.higgs_v2.backend import settings_from_ids

    return settings_from_ids(native, ids or {"<|AUDIO|>": arch["audio_in_token_idx"],
                                             "<|audio_eos|>": arch["audio_eos_token_id"]})


def synthetic_batch(arch: dict, native: dict, seq_len: int, batch: int, ids: dict[str, int] | None = None):
    """`batch` voice-cloning samples of `seq_len` positions (inputs.voice_cloning_batch) as the native collator
    batches them. ARCH: the boson-style arch, NATIVE its native config, IDS the text tokenizer's audio token ids
    (default: ARCH's)."""
    from higgs_ds.models.higgs_v2.inputs import NativeCollator, voice_cloning_batch

    collator = NativeCollator(arch_settings(arch, native, ids), native["audio_token_id"])
    return voice_cloning_batch(collator, native["vocab_size"], seq_len, batch)


def v2_setup(args, arch, seq_len: int, batch: int, checkpointing: bool, ds: dict):
    """(the LoRA model, a batch on the device, its heads, FLOPs per token, the same with the heads at every
    position, the memory model's peak)."""
    from bench.flops import step_flops
    from higgs_ds.checkpoints.model import apply_lora
    from higgs_ds.config import LoraConfig
    from higgs_ds.models.higgs_v2.heads import forward
    from higgs_ds.models.higgs_v2.model import LORA_PRESETS

    ids = TINY_IDS if arch is TINY_ARCH else None
    model, native = random_model(arch, args.device, ids=ids)
    if checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    model = apply_lora(model, LoraConfig(rank=16, alpha=32, dropout=0.0), LORA_PRESETS)
    inputs = synthetic_batch(arch, native, seq_len, batch, ids).to(args.device)
    traced = traced_peak(arch, native, ids, checkpointing, seq_len, batch, ds)
    tokens = inputs.input_ids.numel()
    fpt = step_flops(model, inputs).total / tokens
    return model, inputs, forward, fpt, step_flops(model, inputs, heads="every").total / tokens, traced


def v3_setup(args, arch, seq_len: int, batch: int, checkpointing: bool, ds: dict):
    """v2_setup for Higgs TTS 3 (ARCH unused: the size picks the real or the tiny config)."""
    from bench.flops import step_flops
    from bench.memory import v3_step
    from higgs_ds.checkpoints.model import apply_lora
    from higgs_ds.config import LoraConfig
    from higgs_ds.data.prompt_formats import TTS3_SPECIAL_TOKENS
    from higgs_ds.models.higgs_v3.fixture import REAL_SIZE_CONFIG, TINY_CONFIG, random_model
    from higgs_ds.models.higgs_v3.heads import forward
    from higgs_ds.models.higgs_v3.inputs import V3Collator, voice_cloning_batch
    from higgs_ds.models.higgs_v3.model import LORA_PRESETS

    config = TINY_CONFIG if args.size == "tiny" else REAL_SIZE_CONFIG
    model = random_model(0, config, torch.bfloat16, args.device)
    if checkpointing:
        model.body.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    model = apply_lora(model, LoraConfig(rank=16, alpha=32, dropout=0.0), LORA_PRESETS)
    vocab = config["text_config"]["vocab_size"]
    ids = {name: vocab - 8 + i for i, name in enumerate(TTS3_SPECIAL_TOKENS)}
    audio = model.get_base_model().audio
    inputs = voice_cloning_batch(V3Collator(audio, ids["<|audio|>"], pad_id=0), ids, vocab - 8, seq_len,
                                 batch).to(args.device)
    tokens = inputs.input_ids.numel()
    traced = v3_step(checkpointing, batch, seq_len, config, dropout=0.0).total
    fpt = step_flops(model, inputs).total / tokens
    return model, inputs, forward, fpt, step_flops(model, inputs, heads="every").total / tokens, traced


def run_case(args, arch, seq_len: int, batch: int, checkpointing: bool, memory_gb: float | None) -> dict:
    import deepspeed

    from higgs_ds.distributed import deepspeed_config
    from higgs_ds.training.loss import combine

    cuda = args.device == "cuda"
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, (memory_gb or 1e9) * 2**30 / total))
    ds = deepspeed_config(os.path.join(os.path.dirname(__file__), "..", "ds_configs", "zero2.json"), batch, 1, 1,
                          "bf16", 1.0)
    setup = v3_setup if args.family == "v3" else v2_setup
    model, inputs, forward, fpt, fpt_everywhere, traced = setup(args, arch, seq_len, batch, checkpointing, ds)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=opt, config=ds)
    tokens = inputs.input_ids.numel()
    result = {"seq_len": seq_len, "micro_batch": batch, "activation_checkpointing": checkpointing,
              "memory_cap_gb": memory_gb}
    try:
        times = []
        for i in range(args.warmup + args.steps):
            if cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            s = forward(engine, inputs).sums
            engine.backward(combine(s, float(s.text_tokens), float(s.audio_tokens), 1.0, 1.0))
            engine.step()
            if cuda:
                torch.cuda.synchronize()
            if i >= args.warmup:
                times.append(time.perf_counter() - t0)
        step = sorted(times)[len(times) // 2]
        result.update(ok=True, step_s=step, tokens_per_s=tokens / step, flops_per_token=fpt,
                      head_flops_saved_per_token=fpt_everywhere - fpt,
                      mfu=tokens * fpt / step / (args.peak_tflops * 1e12) if cuda else None,
                      peak_memory_gb=torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
                      traced_peak_gb=traced / 2**30)
    except torch.OutOfMemoryError:
        result.update(ok=False, error="out of memory")
    finally:
        del engine, model, opt
        if cuda:
            torch.cuda.empty_cache()
    return result


def traced_peak(arch, native, ids, checkpointing: bool, seq_len: int, batch: int, ds: dict) -> int:
    """The memory model's peak for this case (higgs_ds/memory.py, traced on the CPU): beside the measured
    max_memory_allocated, which counts the same tensors."""
    from higgs_ds.config import LoraConfig
    from higgs_ds.training.memory_plan import ModelShape, estimate

    shape = ModelShape(native, arch_settings(arch, native, ids), LoraConfig(rank=16, alpha=32, dropout=0.0), ds)
    return estimate(shape, checkpointing, batch, seq_len).total


def run_isolated(args, case: dict) -> dict:
    """One case in a fresh process: its memory cannot leak into the next, and a crash or a kill (host out of
    memory) becomes a failed row instead of ending the benchmark."""
    cmd = [sys.executable, "-m", "bench.gpu", "--family", args.family, "--size", args.size, "--device", args.device,
           "--steps", str(args.steps),
           "--warmup", str(args.warmup), "--peak-tflops", str(args.peak_tflops), "--case", json.dumps(case)]
    env = {**os.environ, "MASTER_PORT": str(free_port())}
    row = {**case, "ok": False}
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=args.case_timeout,
                              cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    except subprocess.TimeoutExpired:
        return {**row, "error": f"no result within {args.case_timeout:.0f} s"}
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT):
            return json.loads(line[len(RESULT):])
    if proc.returncode < 0:
        why = f"killed by signal {-proc.returncode}" + (" (host out of memory?)" if proc.returncode == -9 else "")
    else:
        why = f"exit {proc.returncode}: {proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else ''}"
    return {**row, "error": why}


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def largest_batch(args, seq_len: int, checkpointing: bool, memory_gb: float) -> int:
    best, b = 0, 1
    while b <= args.max_batch:
        case = {"seq_len": seq_len, "micro_batch": b, "activation_checkpointing": checkpointing,
                "memory_cap_gb": memory_gb}
        if not run_isolated(args, case)["ok"]:
            break
        best, b = b, b * 2
    return best


def run_one(args, arch, case: dict) -> int:
    """The child side of run_isolated: measure one case and print it on a RESULT line."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=os.environ.get("MASTER_PORT", "29631"), RANK="0",
                      WORLD_SIZE="1", LOCAL_RANK="0")
    from higgs_ds.distributed import dist_env, init_distributed

    init_distributed(dist_env(), 600)
    row = run_case(args, arch, case["seq_len"], case["micro_batch"], case["activation_checkpointing"],
                   case.get("memory_cap_gb"))
    row["peak_host_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(RESULT + json.dumps(row), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--family", choices=["v2", "v3"], default="v2", help="v3: Higgs TTS 3")
    p.add_argument("--size", choices=["real", "v2", "tiny"], default="real",
                   help="the family's real size (v2: the same, the name older command lines use) or a tiny one")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--seq-lens", type=int, nargs="+", default=[1024, 2048, 4096])
    p.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak (H100/H200 SXM: 989)")
    p.add_argument("--fit", type=float, nargs="*", default=[24, 80], help="memory caps (GB) for the largest batch")
    p.add_argument("--max-batch", type=int, default=64)
    p.add_argument("--case-timeout", type=float, default=3600, help="seconds one case may take")
    p.add_argument("--out", default=None, help="write the results as JSON here (rewritten after every case)")
    p.add_argument("--case", default=None, help=argparse.SUPPRESS)  # internal: run this one case in-process
    args = p.parse_args(argv)
    arch = TINY_ARCH if args.size == "tiny" else V2_ARCH
    if args.case:
        return run_one(args, arch, json.loads(args.case))
    results = {"device": torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu", "family": args.family,
               "size": args.size,
               "cases": [], "largest_micro_batch": []}

    def record(key: str, row: dict) -> None:
        results[key].append(row)
        print(json.dumps(row), flush=True)
        if args.out:  # partial results survive a benchmark that is stopped half-way
            tmp = f"{args.out}.tmp"
            with open(tmp, "w") as f:
                json.dump(results, f, indent=2)
            os.replace(tmp, args.out)

    for seq_len in args.seq_lens:
        for checkpointing in (False, True):
            for batch in args.batches:
                record("cases", run_isolated(args, {"seq_len": seq_len, "micro_batch": batch,
                                                    "activation_checkpointing": checkpointing, "memory_cap_gb": None}))
            if args.device == "cuda":
                for cap in args.fit:
                    record("largest_micro_batch", {"seq_len": seq_len, "activation_checkpointing": checkpointing,
                                                   "memory_gb": cap,
                                                   "micro_batch": largest_batch(args, seq_len, checkpointing, cap)})
    failed = [c for c in results["cases"] if not c["ok"]]
    if failed:
        print(f"{len(failed)} of {len(results['cases'])} cases failed", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
