"""Submit higgs-ds training to SLURM with submitit; preemption and time-outs save a checkpoint and requeue.

    python -m launcher.submit --config configs/higgs_v2_lora.yaml --nodes 2 --gpus-per-node 8 \\
        --partition gpu --time 4:00:00 [key=value ...]
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from pathlib import Path

import submitit

REPO = Path(__file__).resolve().parents[1]


class TrainTask:
    """One task per GPU. `__call__` trains; on SIGUSR2 (submitit's time-limit warning), SIGUSR1 or SIGTERM
    (preemption) every rank sets a flag, all ranks agree at the next step boundary and save together, then rank 0
    requeues the job, which resumes from that checkpoint (resume=auto). submitit's own handler would checkpoint
    inside the signal handler and exit mid-step; ours replaces it once training is set up, and `checkpoint()`
    remains the fallback for a signal that arrives before (nothing to save yet: the last checkpoint stands)."""

    def __init__(self, config: str | None, overrides: list[str], ds_config: str, dist_timeout_s: float = 300):
        self.config, self.overrides, self.ds_config = config, overrides, ds_config
        self.dist_timeout_s = dist_timeout_s

    def __call__(self) -> dict:
        from higgs_ds.config import load_config
        from higgs_ds.distributed import StopSignal
        from higgs_ds.training.loop import train

        env = submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        stop = StopSignal((signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM))
        os.chdir(REPO)
        cfg = load_config(self.config, self.overrides)
        summary = train(cfg, self.ds_config, self.dist_timeout_s, stop=stop)
        if summary["stopped_by"]:
            if env.rank == 0:
                print(f"[launcher] checkpoint saved at step {summary['step']}; requeueing job "
                      f"{os.environ['SLURM_JOB_ID']}", flush=True)
                subprocess.run(["scontrol", "requeue", os.environ["SLURM_JOB_ID"]], check=True)
            sys.exit(0)  # no result yet: the requeued job continues and writes it
        return summary

    def checkpoint(self, *args, **kwargs) -> submitit.helpers.DelayedSubmission:
        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)


def parse_time(text: str) -> int:
    """Minutes from H:MM:SS, MM or D-HH:MM:SS."""
    days, _, rest = text.rpartition("-")
    parts = [int(p) for p in rest.split(":")]
    h, m, s = ([0] * (3 - len(parts)) + parts) if len(parts) > 1 else (0, parts[0], 0)
    return (int(days or 0) * 24 + h) * 60 + m + (1 if s else 0)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True)
    p.add_argument("--deepspeed", default="ds_configs/zero2.json")
    p.add_argument("--nodes", type=int, default=1)
    p.add_argument("--gpus-per-node", type=int, default=8)
    p.add_argument("--tasks-per-node", type=int, default=None, help="default: one per GPU")
    p.add_argument("--cpus-per-task", type=int, default=8)
    p.add_argument("--mem-gb", type=int, default=None)
    p.add_argument("--partition", default=None)
    p.add_argument("--time", default="4:00:00", help="H:MM:SS")
    p.add_argument("--signal-delay-s", type=int, default=180, help="warning before the time limit")
    p.add_argument("--name", default="higgs-ds")
    p.add_argument("--logs", default="logs/submitit", help="submitit folder (%%j = job id)")
    p.add_argument("--dist-timeout", type=float, default=300)
    p.add_argument("--wait", action="store_true", help="wait for the job and print its summary")
    p.add_argument("overrides", nargs="*", help="dotted key=value training overrides")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from higgs_ds.config import load_config

    load_config(args.config, args.overrides)  # a bad config fails here, not after the job waited in the queue
    executor = submitit.AutoExecutor(folder=args.logs)
    params = dict(name=args.name, nodes=args.nodes, tasks_per_node=args.tasks_per_node or args.gpus_per_node,
                  gpus_per_node=args.gpus_per_node, cpus_per_task=args.cpus_per_task,
                  timeout_min=parse_time(args.time), slurm_signal_delay_s=args.signal_delay_s)
    if args.partition:
        params["slurm_partition"] = args.partition
    if args.mem_gb:
        params["mem_gb"] = args.mem_gb
    executor.update_parameters(**params)
    job = executor.submit(TrainTask(args.config, args.overrides, args.deepspeed, args.dist_timeout))
    print(f"submitted job {job.job_id}; logs: {Path(args.logs).resolve()}/{job.job_id}_0_log.out (rank 0) and "
          f"_log.err; watch: squeue -j {job.job_id}", flush=True)
    if args.wait:
        print(job.results()[0])
    return 0


if __name__ == "__main__":
    sys.exit(main())
