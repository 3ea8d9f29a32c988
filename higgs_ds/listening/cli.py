"""`higgs-ds synthesize ...` and `higgs-ds score ...`: speak in a reference voice with a model, adapter or
checkpoint, and score what was said."""

from __future__ import annotations

import argparse
import json
import logging

log = logging.getLogger(__name__)


def _synthesis_config(args):
    from higgs_ds.listening.synthesis import SynthesisConfig

    return SynthesisConfig(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                           top_k=args.top_k, ras_win_len=args.ras_win_len,
                           ras_win_max_num_repeat=args.ras_win_max_num_repeat, seed=args.seed,
                           force_audio=not args.no_force_audio)


def _device(name: str) -> str:
    import torch

    return ("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name


def cmd_synthesize(args) -> int:
    from pathlib import Path

    from higgs_ds.data.codec import load_audio_tokenizer
    from higgs_ds.listening.prompts import Prompt, Reference, read_prompts
    from higgs_ds.listening.synthesis import (ModelSource, load_model_for_generation, summary, synthesize_prompts,
                                              synthesizer_for)

    single = [args.ref_audio, args.ref_text, args.text]
    if args.prompts is None and not all(single):
        raise ValueError("give --prompts FILE.jsonl, or all of --ref-audio, --ref-text and --text")
    if args.prompts is not None and any(single):
        raise ValueError("--prompts and --ref-audio/--ref-text/--text are alternatives")
    if args.prompts is not None:
        prompts, rejects = read_prompts(args.prompts)
        out_dir, wav_paths, report = Path(args.out), None, Path(args.out) / "synthesis.json"
    else:
        out = Path(args.out)
        if out.suffix.lower() != ".wav":
            raise ValueError(f"--out {out}: a single prompt writes a .wav file")
        prompts = [Prompt("prompt", "--text", args.text, [Reference(args.ref_text, args.ref_audio)],
                          target_audio=args.target_audio)]
        rejects, out_dir, wav_paths, report = [], out.parent, {"prompt": out}, out.with_suffix(".json")
    source = ModelSource(model=args.model, adapter=args.adapter, checkpoint=args.checkpoint,
                         tokenizer=args.text_tokenizer, backend=args.backend)
    device = _device(args.device)
    audio_tokenizer = args.audio_tokenizer or _run_audio_tokenizer(source)
    model, tokenizer, loaded = load_model_for_generation(source, device, args.dtype)
    synth = synthesizer_for(model, tokenizer, load_audio_tokenizer(audio_tokenizer, device, args.semantic_model))
    cfg = _synthesis_config(args)
    rows = synthesize_prompts(synth, prompts, cfg, out_dir, progress=not args.quiet, wav_paths=wav_paths)
    rows += [{"id": None, "source": r.source, "error": r.reason} for r in rejects]
    info = {**summary(rows), "rejected_lines": len(rejects), "model": loaded, "audio_tokenizer": audio_tokenizer,
            "device": device, "settings": vars(cfg), "rows": rows}
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(json.dumps(info, indent=1))
    for r in rejects:
        log.error(f"error: {r}")
    print(json.dumps({k: v for k, v in info.items() if k != "rows"} | {"report": str(report)}, indent=1))
    return 1 if info["failed"] else 0


def _run_audio_tokenizer(source) -> str:
    """The audio tokenizer a run's shards were built with (build.json), for --checkpoint without
    --audio-tokenizer."""
    from higgs_ds.checkpoints.saving import run_config_of, step_dir
    from higgs_ds.data.shard_index import ShardIndex

    if source.checkpoint is not None:
        data = run_config_of(step_dir(source.checkpoint))["data"]
        for root in filter(None, [data.get("val")] + data["train"].split(",")):
            try:
                return ShardIndex.load(root.strip()).meta["settings"]["audio_tokenizer"]
            except Exception:  # shards moved or deleted since the run: try the next, then ask
                continue
    raise ValueError("pass --audio-tokenizer DIR|ID (the audio tokenizer the model's shards were built with)")


def cmd_score(args) -> int:
    from pathlib import Path

    from higgs_ds.listening.scoring import Scorer, score_rows

    path = Path(args.synthesis)
    report = path / "synthesis.json" if path.is_dir() else path
    if not report.is_file():
        raise FileNotFoundError(f"{report} does not exist (what `higgs-ds synthesize` writes)")
    rows = [r for r in json.loads(report.read_text())["rows"] if r.get("id") is not None]
    scorer = Scorer(args.asr_model, args.speaker_model, _device(args.device), naturalness=not args.no_dnsmos)
    scores = score_rows(scorer, rows, progress=not args.quiet)
    default = "scores.json" if report.name == "synthesis.json" else f"{report.stem}.scores.json"
    out = Path(args.out) if args.out else report.with_name(default)
    out.write_text(json.dumps(scores, indent=1))
    print_scores(scores)
    print(f"scores: {out}")
    return 1 if scores["failed"] else 0


def print_scores(scores: dict) -> None:
    def fmt(v):
        return "-" if v is None else f"{v:.3f}"

    cols = ["similarity", "wer", "cer", "dnsmos", "seconds", "duration_ratio"]
    print(f"{'prompt':<24}" + "".join(f"{c:>15}" for c in cols))
    for r in scores["prompts"]:
        if "error" in r:
            print(f"{str(r['id']):<24}  failed: {r['error']}")
            continue
        print(f"{str(r['id']):<24}" + "".join(f"{fmt(r['generated'][c]):>15}" for c in cols))
        if "ground_truth" in r:
            print(f"{'  ground truth':<24}" + "".join(f"{fmt(r['ground_truth'][c]):>15}" for c in cols))
    print(f"{'mean':<24}" + "".join(f"{fmt(scores['mean'][c]):>15}" for c in cols))
    if scores["ground_truth_mean"]["seconds_n"]:
        print(f"{'ground truth mean':<24}" + "".join(f"{fmt(scores['ground_truth_mean'][c]):>15}" for c in cols))


def _add_synthesis_options(p: argparse.ArgumentParser) -> None:
    from higgs_ds.listening.synthesis import SynthesisConfig

    d = SynthesisConfig()
    p.add_argument("--max-new-tokens", type=int, default=d.max_new_tokens, help="audio frames (25/s) + text tokens")
    p.add_argument("--temperature", type=float, default=d.temperature, help="0: greedy")
    p.add_argument("--top-p", type=float, default=d.top_p)
    p.add_argument("--top-k", type=int, default=d.top_k)
    p.add_argument("--ras-win-len", type=int, default=d.ras_win_len, help="repetition-aware sampling window (0: off)")
    p.add_argument("--ras-win-max-num-repeat", type=int, default=d.ras_win_max_num_repeat)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--no-force-audio", action="store_true", help="let the model choose to answer with text")


def add_commands(sub) -> None:
    p = sub.add_parser("synthesize", help="speak text in a reference voice with a model, adapter or checkpoint")
    p.add_argument("--model", default=None, help="base or merged model: directory or hub id[@revision]")
    p.add_argument("--adapter", default=None, help="a peft adapter (RUN/adapter) applied to --model")
    p.add_argument("--checkpoint", default=None, help="a run directory (latest), RUN/best or a checkpoint step dir")
    p.add_argument("--text-tokenizer", default=None, help="default: the model's (or the run's)")
    p.add_argument("--backend", default=None,
                   help="native (transformers' class; the default) or package.module:NAME, a backend defined "
                        "outside higgs_ds")
    p.add_argument("--audio-tokenizer", default=None,
                   help="directory or hub id[@revision] (default with --checkpoint: the run's shards' build.json)")
    p.add_argument("--semantic-model", default=None, help="the audio tokenizer's semantic model (see shards build)")
    p.add_argument("--prompts", default=None, help="JSONL: ref_audio, ref_text, text [, id, target_audio, language]")
    p.add_argument("--ref-audio", default=None)
    p.add_argument("--ref-text", default=None)
    p.add_argument("--text", default=None)
    p.add_argument("--target-audio", default=None, help="the text spoken by the reference speaker (ground truth)")
    p.add_argument("--out", required=True, help="a .wav for one prompt, a directory for --prompts")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--dtype", choices=["auto", "bf16", "fp32"], default="auto", help="auto: as stored")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_synthesis_options(p)
    p.set_defaults(func=cmd_synthesize)

    p = sub.add_parser("score", help="speaker similarity, WER/CER, DNSMOS and duration of synthesized audio")
    p.add_argument("synthesis", help="what synthesize wrote: its --out directory or .json")
    p.add_argument("--asr-model", default=None, help="ASR (e.g. Whisper) directory or hub id; without: no WER")
    p.add_argument("--speaker-model", default=None, help="x-vector model directory or hub id (default resemblyzer)")
    p.add_argument("--no-dnsmos", action="store_true")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default=None, help="default: scores.json beside the synthesis report")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_score)
