"""`higgs-ds`: one parser over the command groups each package owns (data: manifest, shards; checkpoints: export,
convert; listening: synthesize, score), plus the built-in fixtures and sample data."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from higgs_ds.checkpoints import cli as checkpoints_cli
from higgs_ds.data import cli as data_cli
from higgs_ds.listening import cli as listening_cli
from higgs_ds.logs import setup_logging


log = logging.getLogger("higgs_ds.cli")


def cmd_fixtures(args) -> int:
    from higgs_ds import fixtures

    os.environ.update(fixtures.offline_env(args.out))  # before transformers is imported
    out = fixtures.build_fixtures(args.out, seed=args.seed)
    env = " ".join(f"{k}={v}" for k, v in fixtures.offline_env(out).items())
    print(f"fixtures in {out}: model/ tokenizer/ audio_tokenizer/ hf_home/\nload them offline with: {env}")
    return 0


def cmd_sample_data(args) -> int:
    from higgs_ds.data.sample_data import make_sample_data

    info = make_sample_data(args.out, args.speakers, args.utterances)
    print(json.dumps(info, indent=2))
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

    data_cli.add_commands(sub)
    checkpoints_cli.add_commands(sub)
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


if __name__ == "__main__":
    sys.exit(main())
