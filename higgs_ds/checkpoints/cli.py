"""`higgs-ds convert ...` and `higgs-ds convert-run ...`: checkpoints and runs in the other layout (`export` is the
model families', models/cli.py)."""

from __future__ import annotations

import json


def cmd_convert(args) -> int:
    from higgs_ds.checkpoints.export import convert

    convert(args.kind, args.src, args.out, args.to, args.tokenizer, args.semantic_model)
    return 0


def cmd_convert_run(args) -> int:
    from higgs_ds.checkpoints.run_convert import convert_run

    done = convert_run(args.run)
    print(json.dumps({"run": args.run, "converted": [str(p) for p in done], "backend": "native"}, indent=1))
    return 0


def add_commands(sub) -> None:
    p = sub.add_parser("convert", help="a model or audio tokenizer written in the other layout")
    p.add_argument("src", help="directory or hub id[@revision], either layout")
    p.add_argument("out", help="a new directory")
    p.add_argument("--to", choices=("boson", "native"), required=True)
    p.add_argument("--kind", choices=("model", "audio_tokenizer"), default="model")
    p.add_argument("--tokenizer", default=None, help="model: the text tokenizer (default: SRC)")
    p.add_argument("--semantic-model", default=None,
                   help="audio tokenizer to native: its HuBERT (default: the one its config names)")
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("convert-run", help="a run trained on boson_multimodal's model (an earlier version), converted in "
                                           "place to resume on the native one (the originals kept in "
                                           "RUN/checkpoints-boson)")
    p.add_argument("run", help="the run directory")
    p.set_defaults(func=cmd_convert_run)
