"""Rank and world from the launcher's environment (deepspeed, torchrun, srun), process-group set-up, the DeepSpeed
config with batch sizes filled in from TrainConfig, and flags all ranks agree on."""

from __future__ import annotations

import datetime
import json
import os
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist


@dataclass
class DistEnv:
    rank: int
    world: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _first_host(nodelist: str) -> str:
    try:
        out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True,
                             check=True, timeout=30).stdout.split()
        return out[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        return nodelist.split(",")[0].split("[")[0]


def dist_env() -> DistEnv:
    """RANK/WORLD_SIZE/LOCAL_RANK as set by deepspeed or torchrun; under srun, derived from SLURM_* (and
    MASTER_ADDR/MASTER_PORT from the allocation when not set)."""
    env = os.environ
    if "RANK" not in env and "SLURM_PROCID" in env and int(env.get("SLURM_NTASKS", "1")) > 1:
        env["RANK"] = env["SLURM_PROCID"]
        env["WORLD_SIZE"] = env["SLURM_NTASKS"]
        env["LOCAL_RANK"] = env.get("SLURM_LOCALID", "0")
        env.setdefault("MASTER_ADDR", _first_host(env.get("SLURM_JOB_NODELIST", "localhost")))
        env.setdefault("MASTER_PORT", str(20000 + int(env.get("SLURM_JOB_ID", "0")) % 20000))
    return DistEnv(int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0)))


def init_distributed(de: DistEnv, timeout_s: float) -> torch.device:
    """One process group for the job: NCCL on GPUs, gloo on CPU (DeepSpeed's own CPU path would compile an op)."""
    if torch.cuda.is_available():
        torch.cuda.set_device(de.local_rank)
        device, backend = torch.device("cuda", de.local_rank), "nccl"
    else:
        device, backend = torch.device("cpu"), "gloo"
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29500")
    os.environ["RANK"], os.environ["WORLD_SIZE"] = str(de.rank), str(de.world)
    os.environ["LOCAL_RANK"] = str(de.local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend, rank=de.rank, world_size=de.world,
                                timeout=datetime.timedelta(seconds=timeout_s))
    import deepspeed

    deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False)
    return device


def deepspeed_config(path: str, micro: int, accum: int, world: int, precision: str, grad_clip: float) -> dict:
    """The JSON at `path` with batch sizes, precision and clipping from TrainConfig. A value the JSON sets that
    disagrees is an error: batch sizes are configured once, in the training config."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"DeepSpeed config {path} does not exist")
    try:
        ds = json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON: {e}") from None
    want = {"train_micro_batch_size_per_gpu": micro, "gradient_accumulation_steps": accum,
            "train_batch_size": micro * accum * world, "gradient_clipping": grad_clip}
    sources = {"train_micro_batch_size_per_gpu": "data.micro_batch_size", "gradient_accumulation_steps": "grad_accum",
               "train_batch_size": "data.micro_batch_size x grad_accum x world size", "gradient_clipping":
               "optim.grad_clip"}
    for key, value in want.items():
        if key in ds and ds[key] != "auto" and ds[key] != value:
            raise ValueError(f"{path}: {key}={ds[key]} conflicts with the training config ({sources[key]} gives "
                             f"{value}); remove it from the JSON or set it to \"auto\"")
        ds[key] = value
    bf16 = ds.get("bf16", {}).get("enabled", "auto")
    if bf16 not in ("auto", precision == "bf16"):
        raise ValueError(f"{path}: bf16.enabled={bf16} conflicts with precision={precision} in the training config")
    if ds.get("fp16", {}).get("enabled") is True:
        raise ValueError(f"{path}: fp16 is not supported; set precision: bf16 or fp32 in the training config")
    ds["bf16"] = {**ds.get("bf16", {}), "enabled": precision == "bf16"}
    ds.pop("fp16", None)
    if "optimizer" in ds or "scheduler" in ds:
        raise ValueError(f"{path}: remove 'optimizer'/'scheduler': higgs-ds passes torch AdamW (nothing to compile) "
                         f"and its warmup schedule, configured under optim.* in the training config")
    ds.setdefault("steps_per_print", 10 ** 9)
    ds.setdefault("wall_clock_breakdown", False)
    return ds


def all_reduce_sum(values: list[float], device) -> list[float]:
    return sum_over_ranks(torch.tensor(values, dtype=torch.float64, device=device)).tolist()


def sum_over_ranks(t: torch.Tensor) -> torch.Tensor:
    """T summed in place over the ranks (a no-op in one process); nothing is read to the host."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t)
    return t


class StopSignal:
    """Sets a flag on SIGUSR1/SIGTERM (SLURM's warning before a time limit, preemption; submitit uses SIGUSR2). Nothing else happens in
    the handler: the loop checks the flag at a step boundary, all ranks agree, then they save together."""

    def __init__(self, signals=(signal.SIGUSR1, signal.SIGTERM)):
        self.received: str | None = None
        for s in signals:
            signal.signal(s, self._handle)

    def _handle(self, signum, frame) -> None:
        self.received = signal.Signals(signum).name
