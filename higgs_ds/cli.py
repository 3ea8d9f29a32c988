"""`higgs-ds`: fixtures, sample data, shard building/inspection, export, synthesis and scoring."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time

from higgs_ds.logs import setup_logging


log = logging.getLogger("higgs_ds.cli")


def _print_info(info: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(info))
        return
    width = max(len(k) for k in info)
    for k, v in info.items():
        print(f"{k:>{width}}: {v}")


def cmd_fixtures(args) -> int:
    from higgs_ds import fixtures

    os.environ.update(fixtures.offline_env(args.out))  # before transformers is imported
    out = fixtures.build_fixtures(args.out, seed=args.seed)
    env = " ".join(f"{k}={v}" for k, v in fixtures.offline_env(out).items())
    print(f"fixtures in {out}: model/ tokenizer/ audio_tokenizer/ hf_home/\nload them offline with: {env}")
    return 0


def cmd_sample_data(args) -> int:
    from higgs_ds.sample_data import make_sample_data

    info = make_sample_data(args.out, args.speakers, args.utterances)
    print(json.dumps(info, indent=2))
    return 0


def _limits(args):
    from higgs_ds.audio import AudioLimits

    return AudioLimits(min_seconds=args.min_seconds, max_seconds=args.max_seconds,
                       min_sample_rate=args.min_sample_rate)


def _text_limits(args):
    from higgs_ds.chatml import TextLimits

    return TextLimits(max_text_tokens=args.max_text_tokens, max_chars_per_second=args.max_chars_per_second)


def cmd_shards_build(args) -> int:
    from higgs_ds.shards import BuildConfig, BuildFailed, build_shards, parse_part

    cfg = BuildConfig(input=args.input, out=args.out, audio_tokenizer=args.audio_tokenizer,
                      text_tokenizer=args.text_tokenizer, format=args.format, refs_per_target=args.refs_per_target,
                      seed=args.seed, shard_size=args.shard_size, part=parse_part(args.part), workers=args.workers,
                      cache_dir=args.cache_dir, max_reject_fraction=args.max_reject_fraction, limits=_limits(args),
                      text_limits=_text_limits(args), semantic_model=args.semantic_model)
    t0 = time.time()
    try:
        summary = build_shards(cfg)
    except BuildFailed as e:
        log.error(f"build failed: {e}")
        return 1
    summary["seconds"] = round(time.time() - t0, 2)
    print(json.dumps(summary, indent=2))
    return 0


def cmd_shards_validate(args) -> int:
    from higgs_ds.shards import reject_verdict, validate_manifest

    total, problems = validate_manifest(args.input, args.format, args.refs_per_target, args.seed, _limits(args),
                                        args.workers, args.text_tokenizer, _text_limits(args))
    for p in problems:
        print(p)
    over, verdict = reject_verdict(problems, total, args.max_reject_fraction)
    print(f"{total} records, {len(problems)} with problems: {verdict} (what `shards build` would do)",
          file=sys.stderr)
    return 1 if over else 0


def cmd_shards_inspect(args) -> int:
    from higgs_ds.shard_check import inspect

    _print_info(inspect(args.dir), args.json)
    return 0


def cmd_shards_verify(args) -> int:
    from higgs_ds.shard_check import verify

    problems = verify(args.dir)
    for p in problems:
        print(f"BAD {p}")
    print("ok" if not problems else f"{len(problems)} problem(s)")
    return 1 if problems else 0


def cmd_shards_plan(args) -> int:
    from higgs_ds.config import DataConfig
    from higgs_ds.plan import PlanSettings, plan_epoch, random_batches_efficiency, sample_costs
    from higgs_ds.shard_index import ShardIndex

    index = ShardIndex.load(args.dir)
    data = DataConfig(train=args.dir, micro_batch_size=args.micro_batch_size, num_workers=args.workers,
                      token_budget=args.token_budget, max_batch_size=args.max_batch_size, sort_window=args.sort_window,
                      speaker_cap=args.speaker_cap, speaker_temperature=args.speaker_temperature)
    settings = PlanSettings.from_config(data, world=args.world_size, accum=args.grad_accum)
    plan = plan_epoch(index.rows, args.seed, args.epoch, settings)
    costs = sample_costs(index.rows, settings.clip_overhead) if (index.rows["text_tokens"] >= 0).all() else None
    per_rank = plan.batches_per_rank
    info = {"samples": len(index), "selected": plan.selected, "batches_per_rank": per_rank,
            "samples_dropped": plan.dropped, "dropped_fraction": plan.dropped / max(1, plan.selected),
            "padding_efficiency": plan.padding_efficiency,
            "random_batching_padding_efficiency": random_batches_efficiency(costs, args.micro_batch_size)
            if costs is not None else None,
            "steps_per_epoch": per_rank[0] // args.grad_accum if per_rank else 0, "over_budget": plan.over_budget,
            "tokens_per_epoch": int(costs.sum()) if costs is not None else None}
    _print_info(info, args.json)
    return 0


def cmd_shards_merge(args) -> int:
    from higgs_ds.shards import write_index

    index = write_index(args.dir)
    print(f"{args.dir}: {index['samples']} samples in {len(index['shards'])} shards, {index['rejected']} rejected")
    return 0


def cmd_export(args) -> int:
    from higgs_ds.export import export

    export(args.checkpoint, args.out, args.merge, args.base, args.layout)
    return 0


def cmd_convert(args) -> int:
    from higgs_ds.export import convert

    convert(args.kind, args.src, args.out, args.to, args.tokenizer, args.semantic_model)
    return 0


def cmd_manifest_import(args) -> int:
    from pathlib import Path

    from higgs_ds.corpora import ImportOptions, import_corpus, summarize, write_manifest, write_rejects

    out = Path(args.out)
    opts = ImportOptions(text=args.text, audio_dir=Path(args.audio_dir) if args.audio_dir else
                         out.with_name(out.name.rsplit(".", 1)[0] + "_audio"), language=args.language, mic=args.mic,
                         subset=args.subset, text_column=args.text_column, speaker_column=args.speaker_column,
                         audio_column=args.audio_column, language_column=args.language_column)
    t0 = time.time()
    utterances, rejects = import_corpus(args.format, args.src, opts)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_manifest(out, utterances)
    rejected = write_rejects(out, rejects)
    for r in rejects[:20]:
        log.warning(f"left out {r}")
    seconds = time.time() - t0
    print(json.dumps({"manifest": str(out), **summarize(utterances), "rejected": len(rejects),
                      "rejects": str(rejected), "seconds": round(seconds, 2),
                      "utterances_per_s": round((len(utterances) + len(rejects)) / max(seconds, 1e-9))}, indent=1))
    if not utterances:
        log.error(f"error: no utterance imported from {args.src} ({len(rejects)} left out, see {rejected})")
        return 1
    return 0


def cmd_manifest_split(args) -> int:
    from higgs_ds.splits import split_manifest

    info = split_manifest(args.manifest, args.out_dir, args.val_speakers, args.val_fraction, args.heldout_fraction,
                          args.seed)
    print(json.dumps({k: v for k, v in info.items() if k != "val_speakers"} |
                     {"val_speakers": len(info["val_speakers"])}, indent=1))
    return 0


def cmd_manifest_prompts(args) -> int:
    from higgs_ds.splits import listening_prompts

    n = listening_prompts(args.manifest, args.out, args.count, args.seed)
    print(f"{n} prompts in {args.out} (use as eval.prompts or higgs-ds synthesize --prompts)")
    return 0


def _synthesis_config(args):
    from higgs_ds.synthesis import SynthesisConfig

    return SynthesisConfig(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                           top_k=args.top_k, ras_win_len=args.ras_win_len,
                           ras_win_max_num_repeat=args.ras_win_max_num_repeat, seed=args.seed,
                           force_audio=not args.no_force_audio)


def _device(name: str) -> str:
    import torch

    return ("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name


def cmd_synthesize(args) -> int:
    from pathlib import Path

    from higgs_ds.codec import load_audio_tokenizer
    from higgs_ds.prompts import Prompt, Reference, read_prompts
    from higgs_ds.synthesis import ModelSource, Synthesizer, load_model_for_generation, summary, synthesize_prompts

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
                         tokenizer=args.text_tokenizer)
    device = _device(args.device)
    audio_tokenizer = args.audio_tokenizer or _run_audio_tokenizer(source)
    model, tokenizer, loaded = load_model_for_generation(source, device, args.dtype)
    synth = Synthesizer(model, tokenizer, load_audio_tokenizer(audio_tokenizer, device, args.semantic_model))
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
    from higgs_ds.checkpoint import run_config_of, step_dir
    from higgs_ds.shard_index import ShardIndex

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

    from higgs_ds.scoring import Scorer, score_rows

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
    from higgs_ds.synthesis import SynthesisConfig

    d = SynthesisConfig()
    p.add_argument("--max-new-tokens", type=int, default=d.max_new_tokens, help="audio frames (25/s) + text tokens")
    p.add_argument("--temperature", type=float, default=d.temperature, help="0: greedy")
    p.add_argument("--top-p", type=float, default=d.top_p)
    p.add_argument("--top-k", type=int, default=d.top_k)
    p.add_argument("--ras-win-len", type=int, default=d.ras_win_len, help="repetition-aware sampling window (0: off)")
    p.add_argument("--ras-win-max-num-repeat", type=int, default=d.ras_win_max_num_repeat)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--no-force-audio", action="store_true", help="let the model choose to answer with text")


def _add_build_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--input", required=True, help="manifest: ChatML JSONL or utterance JSONL")
    p.add_argument("--format", choices=["auto", "chatml", "utterances"], default="auto")
    p.add_argument("--refs-per-target", type=int, default=1, help="utterance manifests: references per target")
    p.add_argument("--seed", type=int, default=0, help="seed of the reference pairing")
    p.add_argument("--text-tokenizer", default=None,
                   help="directory or hub id[@revision]; stores token ids and counts in the shards")
    p.add_argument("--workers", type=int, default=4, help="threads decoding and checking audio")
    p.add_argument("--min-seconds", type=float, default=0.2)
    p.add_argument("--max-seconds", type=float, default=60.0)
    p.add_argument("--min-sample-rate", type=int, default=8000)
    p.add_argument("--max-text-tokens", type=int, default=2048, help="ChatML tokens per record (with --text-tokenizer)")
    p.add_argument("--max-chars-per-second", type=float, default=40.0,
                   help="user-turn text characters per second of the record's audio (0: no bound)")
    p.add_argument("--max-reject-fraction", type=float, default=0.01,
                   help="the share of records that may be rejected (build fails above it; validate exits 1)")


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

    _add_shards_commands(sub)

    p = sub.add_parser("export", help="a checkpoint's LoRA adapter (peft format), or a merged bf16 model")
    p.add_argument("--checkpoint", required=True, help="a checkpoint step dir, or a run dir (takes its latest)")
    p.add_argument("--out", required=True)
    p.add_argument("--merge", action="store_true", help="fold the adapter into the base weights (bf16)")
    p.add_argument("--base", default=None, help="base model directory or hub id[@revision], either layout "
                                                "(default: the run's model.path as resolved)")
    p.add_argument("--layout", choices=("boson", "native"), default="boson",
                   help="boson: for boson_multimodal (HiggsAudioModel, its serve engine); native: for transformers "
                        ">= 5.3 (HiggsAudioV2ForConditionalGeneration), vLLM-Omni, sglang-omni")
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

    _add_manifest_commands(sub)
    _add_listening_commands(sub)
    return parser


def _add_shards_commands(sub) -> None:
    shards = sub.add_parser("shards", help="build, validate, inspect, verify, merge shard sets").add_subparsers(
        dest="shards_command", required=True)
    p = shards.add_parser("build", help="manifest -> WebDataset shards of ChatML + audio codes")
    _add_build_common(p)
    p.add_argument("--out", required=True)
    p.add_argument("--audio-tokenizer", required=True,
                   help="directory or hub id[@revision] (bosonai/higgs-audio-v2-tokenizer: pinned revision)")
    p.add_argument("--semantic-model", default=None,
                   help="directory or hub id[@revision] of the tokenizer's semantic model (default: the hub id its "
                        "config names, e.g. bosonai/hubert_base)")
    p.add_argument("--shard-size", type=int, default=1000, help="records per shard")
    p.add_argument("--part", default="0/1", help="I/N: build the shards j with j %% N == I")
    p.add_argument("--cache-dir", default=None, help="code cache (default ~/.cache/higgs-ds/codes)")
    p.set_defaults(func=cmd_shards_build)

    p = shards.add_parser("validate", help="check every record without encoding audio")
    _add_build_common(p)
    p.set_defaults(func=cmd_shards_validate)

    p = shards.add_parser("inspect", help="totals and length percentiles of a shard set")
    p.add_argument("dir")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_shards_inspect)

    p = shards.add_parser("verify", help="checksums, counts, every sample decodes")
    p.add_argument("dir")
    p.set_defaults(func=cmd_shards_verify)

    p = shards.add_parser("plan", help="batches per rank, drops and padding efficiency of an epoch's data plan")
    p.add_argument("dir")
    p.add_argument("--world-size", type=int, required=True)
    p.add_argument("--workers", type=int, default=1, help="data loader workers per rank")
    p.add_argument("--token-budget", type=int, default=0, help="padded tokens per micro-batch (0: fixed size)")
    p.add_argument("--micro-batch-size", type=int, default=2, help="samples per micro-batch without a token budget")
    p.add_argument("--max-batch-size", type=int, default=64)
    p.add_argument("--sort-window", type=int, default=2000)
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--speaker-cap", type=int, default=0)
    p.add_argument("--speaker-temperature", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epoch", type=int, default=0)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_shards_plan)

    p = shards.add_parser("merge", help="join the parts of a --part build into one index")
    p.add_argument("dir")
    p.set_defaults(func=cmd_shards_merge)


def _add_manifest_commands(sub) -> None:
    manifest = sub.add_parser("manifest", help="import corpora into utterance manifests, split them").add_subparsers(
        dest="manifest_command", required=True)
    from higgs_ds.corpora import FORMATS

    p = manifest.add_parser("import", help="a corpus in its own layout -> utterances.jsonl (+ .rejects.jsonl)")
    p.add_argument("src", help="the corpus folder (or file: a NeMo manifest, a parquet file)")
    p.add_argument("--format", required=True, choices=FORMATS)
    p.add_argument("--out", required=True, help="the utterance manifest to write (JSONL)")
    p.add_argument("--text", choices=["normalized", "original"], default="normalized",
                   help="which transcript, where the corpus ships both (ljspeech, libritts, nemo)")
    p.add_argument("--audio-dir", default=None,
                   help="where audio held inside records is written (parquet, emilia tars, segments); default "
                        "OUT_audio/ beside the manifest")
    p.add_argument("--language", default=None, help="the language, where the corpus does not say")
    p.add_argument("--mic", default="mic1", choices=["mic1", "mic2"], help="vctk 0.92: which microphone")
    p.add_argument("--subset", default="validated", help="commonvoice: which .tsv (validated, train, dev, test, ...)")
    for col in ("text", "speaker", "audio", "language"):
        p.add_argument(f"--{col}-column", default=None, help=f"hf-parquet: the {col} column (default: detected)")
    p.set_defaults(func=cmd_manifest_import)

    p = manifest.add_parser("split", help="speaker-disjoint train/val (and held-out utterances of seen speakers)")
    p.add_argument("manifest")
    p.add_argument("--out-dir", required=True, help="writes train.jsonl, val.jsonl, [heldout.jsonl], split.json")
    p.add_argument("--val-speakers", type=int, default=None, help="this many speakers only in val")
    p.add_argument("--val-fraction", type=float, default=None,
                   help="whole speakers in val until they hold this share of the utterances")
    p.add_argument("--heldout-fraction", type=float, default=0.0,
                   help="this share of each training speaker's utterances goes to heldout.jsonl")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_manifest_split)

    p = manifest.add_parser("prompts", help="listening prompts (reference + target of one speaker) from a manifest")
    p.add_argument("manifest")
    p.add_argument("--out", required=True)
    p.add_argument("--count", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_manifest_prompts)


def _add_listening_commands(sub) -> None:
    p = sub.add_parser("synthesize", help="speak text in a reference voice with a model, adapter or checkpoint")
    p.add_argument("--model", default=None, help="base or merged model: directory or hub id[@revision]")
    p.add_argument("--adapter", default=None, help="a peft adapter (RUN/adapter) applied to --model")
    p.add_argument("--checkpoint", default=None, help="a run directory (latest), RUN/best or a checkpoint step dir")
    p.add_argument("--text-tokenizer", default=None, help="default: the model's (or the run's)")
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
