"""`higgs-ds export ...`: a run's adapter or merged model, written the way its model family's checkpoints are."""

from __future__ import annotations

from pathlib import Path


def cmd_export(args) -> int:
    from higgs_ds.checkpoints.hub import locate
    from higgs_ds.checkpoints.saving import run_config_of, step_dir
    from higgs_ds.config import ConfigError

    ckpt = step_dir(args.checkpoint)
    base, layout = locate(args.base or run_config_of(ckpt)["model"]["path"], "model")
    if layout != "tts3":
        from higgs_ds.checkpoints.export import export

        export(ckpt, args.out, args.merge, args.base, args.layout or "native")
        return 0
    from higgs_ds.models.higgs_v3.export import export_adapter, export_merged

    if args.layout not in (None, "native"):
        raise ConfigError(f"--layout {args.layout}: Higgs TTS 3 has one checkpoint layout (native); boson_multimodal "
                          f"does not read it")
    (export_merged if args.merge else export_adapter)(ckpt / "adapter", base.path, Path(args.out))
    return 0


def add_commands(sub) -> None:
    p = sub.add_parser("export", help="a checkpoint's LoRA adapter (peft format), or a merged model")
    p.add_argument("--checkpoint", required=True, help="a checkpoint step dir, or a run dir (takes its latest)")
    p.add_argument("--out", required=True)
    p.add_argument("--merge", action="store_true",
                   help="fold the adapter into the base weights (v2: bf16; Higgs TTS 3: the base's dtype)")
    p.add_argument("--base", default=None, help="base model directory or hub id[@revision], either layout "
                                                "(default: the run's model.path as resolved)")
    p.add_argument("--layout", choices=("native", "boson"), default=None,
                   help="native (default): for transformers >= 5.3 (HiggsAudioV2ForConditionalGeneration) and "
                        "vLLM-Omni, and Higgs TTS 3's own layout; boson (v2 only): for boson_multimodal "
                        "(HiggsAudioModel, its serve engine)")
    p.set_defaults(func=cmd_export)
