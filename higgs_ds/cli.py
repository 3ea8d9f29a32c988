"""`higgs-ds`: one parser over the command groups each package owns (data: manifest, shards; checkpoints: export,
convert; listening: synthesize, score), plus the built-in fixtures and sample data."""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import sys

from higgs_ds.checkpoints import cli as checkpoints_cli
from higgs_ds.data import cli as data_cli
from higgs_ds.listening import cli as listening_cli
from higgs_ds.models import cli as models_cli
from higgs_ds.logs import setup_logging


log = logging.getLogger("higgs_ds.cli")


def cmd_fixtures(args) -> int:
    from higgs_ds import fixtures

    os.environ.update(fixtures.offline_env(args.out))  # before transformers is imported
    out = fixtures.build_fixtures(args.out, seed=args.seed)
    env = " ".join(f"{k}={v}" for k, v in fixtures.offline_env(out).items())
    print(f"fixtures in {out}: model/ tokenizer/ audio_tokenizer/ v3_model/ hf_home/\nload them offline with: {env}")
    return 0


def cmd_sample_data(args) -> int:
    from higgs_ds.data.sample_data import make_sample_data

    info = make_sample_data(args.out, args.speakers, args.utterances)
    print(json.dumps(info, indent=2))
    return 0


def gib(text: str) -> float:
    """A memory size: 24, 24GiB (both GiB) or 24GB (10^9 bytes)."""
    t = text.strip().lower()
    scale = 1e9 / 2**30 if t.endswith("gb") else 1.0
    try:
        return float(t.removesuffix("gib").removesuffix("gb")) * scale
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a memory size like 24GiB") from None


def cmd_plan_memory(args) -> int:
    from higgs_ds.config import load_config
    from higgs_ds.training.memory_plan import budget_shape, check_fits, format_table, model_shape, table

    cfg = load_config(args.config, args.overrides, need_data=False)
    shape = model_shape(cfg, args.deepspeed)
    print(f"one training step on one of {args.world} ranks: {cfg.model.path}, LoRA {cfg.lora.preset} rank "
          f"{cfg.lora.rank}, bf16, ZeRO-2 ({args.deepspeed}); samples of up to "
          f"{budget_shape(max(args.tokens))[1]} positions")
    print(format_table(table(shape, args.tokens, args.world), args.gpu_memory))
    if cfg.data.train and args.gpu_memory:
        check_fits(cfg, shape, args.gpu_memory * 2**30, args.world)  # raises, naming what fits, if it does not
        print(f"this run ({args.config}): its largest micro-batch fits {args.gpu_memory:g} GiB")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="higgs-ds", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("fixtures", help="write a tiny random Higgs stack (model, tokenizers) for tests and the demo")
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_fixtures)

    p = sub.add_parser("sample-data", help="speak sample utterances with espeak-ng and write manifests")
    p.add_argument("--out", required=True)
    p.add_argument("--speakers", type=int, default=3)
    p.add_argument("--utterances", type=int, default=4, help="utterances per speaker")
    p.set_defaults(func=cmd_sample_data)

    p = sub.add_parser("plan-memory", help="the peak GPU memory of a training step by micro-batch token budget, "
                                           "checkpointing on and off, traced on the CPU (no GPU needed)")
    p.add_argument("--config", default=None, help="the training config (its model, LoRA and data)")
    p.add_argument("--deepspeed", default=os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                                       "ds_configs", "zero2.json"))
    p.add_argument("--gpu-memory", type=gib, default=None, help="the card's memory, e.g. 24GiB: which rows fit, "
                                                                "and whether the config's own batches do")
    p.add_argument("--world", type=int, default=1, help="ranks (ZeRO-2 splits the optimizer state over them)")
    p.add_argument("--tokens", type=lambda t: [int(x) for x in t.split(",")], default=[2048, 4096, 8192, 16384],
                   help="micro-batch token budgets, one row each (comma-separated; default 2048,4096,8192,16384)")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides of the config")
    p.set_defaults(func=cmd_plan_memory)

    data_cli.add_commands(sub)
    checkpoints_cli.add_commands(sub)
    models_cli.add_commands(sub)
    listening_cli.add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (OSError, ValueError, RuntimeError) as e:
        log.error(f"error: {e}")
        return 2


def console() -> int:
    """The `higgs-ds` command: main, then an exit without the interpreter's last garbage collections, which walk the
    half a million objects of torch, transformers and peft for 1-2 s and free nothing a finished process needs."""
    code = main()
    gc.freeze()
    return code


if __name__ == "__main__":
    sys.exit(console())
