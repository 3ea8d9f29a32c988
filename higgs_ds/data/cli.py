"""`higgs-ds manifest ...` and `higgs-ds shards ...`: corpora into manifests, manifests into shard sets, and shard
sets checked."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time

log = logging.getLogger(__name__)


def print_info(info: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(info))
        return
    width = max(len(k) for k in info)
    for k, v in info.items():
        print(f"{k:>{width}}: {v}")


def _limits(args):
    from higgs_ds.audio import AudioLimits

    return AudioLimits(min_seconds=args.min_seconds, max_seconds=args.max_seconds,
                       min_sample_rate=args.min_sample_rate)


def _text_limits(args):
    from higgs_ds.data.chatml import TextLimits

    return TextLimits(max_text_tokens=args.max_text_tokens, max_chars_per_second=args.max_chars_per_second)


def cmd_shards_build(args) -> int:
    from higgs_ds.data.shards import BuildConfig, BuildFailed, build_shards, parse_part

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
    from higgs_ds.data.shards import reject_verdict, validate_manifest

    total, problems = validate_manifest(args.input, args.format, args.refs_per_target, args.seed, _limits(args),
                                        args.workers, args.text_tokenizer, _text_limits(args))
    for p in problems:
        print(p)
    over, verdict = reject_verdict(problems, total, args.max_reject_fraction)
    print(f"{total} records, {len(problems)} with problems: {verdict} (what `shards build` would do)",
          file=sys.stderr)
    return 1 if over else 0


def cmd_shards_inspect(args) -> int:
    from higgs_ds.data.shard_check import inspect

    print_info(inspect(args.dir), args.json)
    return 0


def cmd_shards_verify(args) -> int:
    from higgs_ds.data.shard_check import verify

    problems = verify(args.dir)
    for p in problems:
        print(f"BAD {p}")
    print("ok" if not problems else f"{len(problems)} problem(s)")
    return 1 if problems else 0


def cmd_shards_plan(args) -> int:
    from higgs_ds.config import DataConfig
    from higgs_ds.data.plan import PlanSettings, plan_epoch, random_batches_efficiency, sample_costs
    from higgs_ds.data.shard_index import ShardIndex

    index = ShardIndex.load(args.dir)
    data = DataConfig(train=args.dir, micro_batch_size=args.micro_batch_size,
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
    print_info(info, args.json)
    return 0


def cmd_shards_merge(args) -> int:
    from higgs_ds.data.shards import write_index

    index = write_index(args.dir)
    print(f"{args.dir}: {index['samples']} samples in {len(index['shards'])} shards, {index['rejected']} rejected")
    return 0


def cmd_manifest_import(args) -> int:
    from pathlib import Path

    from higgs_ds.data.corpora import ImportOptions, import_corpus, summarize, write_manifest, write_rejects

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
    from higgs_ds.data.splits import split_manifest

    info = split_manifest(args.manifest, args.out_dir, args.val_speakers, args.val_fraction, args.heldout_fraction,
                          args.seed)
    print(json.dumps({k: v for k, v in info.items() if k != "val_speakers"} |
                     {"val_speakers": len(info["val_speakers"])}, indent=1))
    return 0


def cmd_manifest_prompts(args) -> int:
    from higgs_ds.data.splits import listening_prompts

    n = listening_prompts(args.manifest, args.out, args.count, args.seed)
    print(f"{n} prompts in {args.out} (use as eval.prompts or higgs-ds synthesize --prompts)")
    return 0


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


def add_commands(sub) -> None:
    """The `manifest` and `shards` command groups, in the order of the data path."""
    _add_manifest_commands(sub)
    _add_shards_commands(sub)


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
    from higgs_ds.data.corpora import FORMATS

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
