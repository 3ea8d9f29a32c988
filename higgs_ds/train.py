"""LoRA fine-tuning of Higgs-Audio v2 with DeepSpeed.

    deepspeed [--num_gpus N] higgs_ds/train.py --deepspeed ds_configs/zero2.json --config CONFIG.yaml [key=value ...]
    torchrun --nproc_per_node N higgs_ds/train.py ...        srun python higgs_ds/train.py ...
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import sys
from pathlib import Path

from higgs_ds.checkpoints.checkpoint_dir import CheckpointError
from higgs_ds.checkpoints.saving import CheckpointDamaged
from higgs_ds.config import ConfigError, load_config
from higgs_ds.data.sample_format import ShardError, ShardSetError
from higgs_ds.distributed import StopSignal, dist_env
from higgs_ds.files import no_space
from higgs_ds.logs import setup_logging
from higgs_ds.training.loop import train
from higgs_ds.training.stops import Diverged, TooManySkippedSamples
from higgs_ds.training.run_dir import RunDirInUse

log = logging.getLogger("higgs_ds.train")

EXIT_USER_ERROR = 2  # a wrong config or checkpoint: nothing ran
EXIT_STOPPED = 3  # stopped on a signal after saving a checkpoint: the launcher requeues
EXIT_DIVERGED = 4  # the run can no longer learn: stopped, nothing exported, the last good checkpoint kept


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=None, help="YAML training config")
    parser.add_argument("--deepspeed", default=str(Path(__file__).resolve().parents[1] / "ds_configs/zero2.json"),
                        help="DeepSpeed JSON (ZeRO stage, precision, offload)")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--dist-timeout", type=float, default=float(os.environ.get("HIGGS_DS_DIST_TIMEOUT", 600)),
                        help="seconds a collective may wait for a lost rank before the job fails")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. optim.lr=3e-4 steps=2000")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
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
    except Diverged as e:  # likewise
        if de.is_main:
            log.error(f"error: {e}")
        return EXIT_DIVERGED
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
    code = main()
    gc.freeze()  # as in `higgs-ds` (cli.console): no last collections over the libraries' objects, 1-2 s a rank
    sys.exit(code)
