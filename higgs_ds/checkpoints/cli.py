"""`higgs-ds export ...` and `higgs-ds convert ...`: a run's adapter or merged model, and checkpoints in the other
layout."""

from __future__ import annotations

import json


def cmd_export(args) -> int:
    from higgs_ds.checkpoints.export import export

    export(args.checkpoint, args.out, args.merge, args.base, args.layout)
    return 0


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
    p = sub.add_parser("export", help="a checkpoint's LoRA adapter (peft format), or a merged bf16 model")
    p.add_argument("--checkpoint", required=True, help="a checkpoint step dir, or a run dir (takes its latest)")
    p.add_argument("--out", required=True)
    p.add_argument("--merge", action="store_true", help="fold the adapter into the base weights (bf16)")
    p.add_argument("--base", default=None, help="base model directory or hub id[@revision], either layout "
                                                "(default: the run's model.path as resolved)")
    p.add_argument("--layout", choices=("native", "boson"), default="native",
                   help="native: for transformers >= 5.3 (HiggsAudioV2ForConditionalGeneration) and vLLM-Omni; "
                        "boson: for boson_multimodal (HiggsAudioModel, its serve engine)")
    p.set_defaults(func=cmd_export)

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
