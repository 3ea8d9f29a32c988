"""`higgs-ds`: fixtures, sample data, shard building/inspection, export."""

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
    from higgs_ds.shards import validate_manifest

    total, problems = validate_manifest(args.input, args.format, args.refs_per_target, args.seed, _limits(args),
                                        args.workers, args.text_tokenizer, _text_limits(args))
    for p in problems:
        print(p)
    print(f"{total} records, {len(problems)} with problems", file=sys.stderr)
    return 1 if problems else 0


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
    from higgs_ds.checkpoint import export

    export(args.checkpoint, args.out, args.merge, args.base)
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
    p.add_argument("--max-reject-fraction", type=float, default=0.01)
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
    p = sub.add_parser("export", help="a checkpoint's LoRA adapter (peft format), or a merged bf16 model")
    p.add_argument("--checkpoint", required=True, help="a checkpoint step dir, or a run dir (takes its latest)")
    p.add_argument("--out", required=True)
    p.add_argument("--merge", action="store_true", help="fold the adapter into the base weights (bf16)")
    p.add_argument("--base", default=None,
                   help="base model directory or hub id[@revision] (default: the run's model.path as resolved)")
    p.set_defaults(func=cmd_export)
    return parser


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        log.error(f"error: {e}")
        return 2


if __name__ == "__main__":
    sys.exit(main())
