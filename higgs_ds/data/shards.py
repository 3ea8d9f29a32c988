"""Build WebDataset shards of ChatML records with pre-tokenized audio codes, and join their index.

Layout of a shard set DIR:
  build.json             the settings every part of the build shares (checked on resume and by each part)
  shard-%06d.tar         samples `sNNNNNNNNN.json` (the ChatML record + audio metadata) and `.codes.npy`
                         (int16, num_codebooks x total frames, the record's audio clips concatenated in order)
  parts/shard-%06d.json  per-shard sidecar: checksum, totals, per-sample rows, rejects (written after the tar)
  index.json/index.npz   the joined index (shards + one row per sample), written once every shard is done
  rejects.jsonl          every rejected record with its manifest line and reason

Record i of the manifest always lands in shard i // shard_size, whatever part builds it, so `--part I/N`
builds (shards j with j % N == I) join into exactly the shards a single build writes.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from higgs_ds.audio import AudioError, AudioLimits, check_audio
from higgs_ds.data.chatml import (Record, RecordError, Reject, TextLimits, content_items,
                             load_text_tokenizer, read_manifest, text_tokenizer_fingerprint,
                             user_text_chars)
from higgs_ds.data.prompt_formats import CHATML, count_text_tokens, prompt_format, record_tokens
from higgs_ds.data.sample_format import ShardError, sample_members, shard_name
from higgs_ds.data.shard_index import FORMAT_VERSION, INDEX_COLUMNS
from higgs_ds.files import atomic_write, no_space

log = logging.getLogger(__name__)


class BuildFailed(RuntimeError):
    """The build stopped on purpose (too many rejects, mismatched settings)."""


@dataclass
class BuildConfig:
    input: str
    out: str
    audio_tokenizer: str
    text_tokenizer: str | None = None
    format: str = "auto"
    refs_per_target: int = 1
    seed: int = 0
    shard_size: int = 1000
    part: tuple[int, int] = (0, 1)
    workers: int = 4
    cache_dir: str | None = None
    max_reject_fraction: float = 0.01
    limits: AudioLimits = field(default_factory=AudioLimits)
    text_limits: TextLimits = field(default_factory=TextLimits)
    semantic_model: str | None = None  # where the audio tokenizer's semantic model is (default: its hub id)


def parse_part(text: str) -> tuple[int, int]:
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise ValueError(f"--part must look like I/N (e.g. 0/4), got {text!r}") from None
    if not (n >= 1 and 0 <= i < n):
        raise ValueError(f"--part {text}: need 0 <= I < N")
    return i, n


class ClipChecks:
    """Every audio file decoded and checked once (exists, decodes, length within limits): its seconds, or why it
    cannot be used (the message names the file). `prefetch` checks many at once on a thread pool."""

    def __init__(self, limits: AudioLimits, workers: int = 4):
        self.limits, self.workers = limits, max(1, workers)
        self.results: dict[str, float | str] = {}

    def _check(self, path: str) -> tuple[str, float | str]:
        try:
            return path, check_audio(path, self.limits)
        except AudioError as e:
            return path, str(e)

    def prefetch(self, paths) -> None:
        todo = sorted({p for p in paths if p not in self.results})
        with ThreadPoolExecutor(self.workers) as pool:
            self.results.update(pool.map(self._check, todo))

    def __call__(self, path: str) -> float | str:
        if path not in self.results:
            self.results[path] = self._check(path)[1]
        return self.results[path]

    def seconds(self) -> dict[str, float]:
        return {p: v for p, v in self.results.items() if isinstance(v, float)}


def utterance_fault(checks: ClipChecks, limits: TextLimits):
    """utterance -> why it can be neither a target nor a reference (its clip, or its transcript's rate), or None."""
    def fault(u) -> str | None:
        seconds = checks(u.audio)
        if isinstance(seconds, str):
            return seconds
        if limits.max_chars_per_second and len(u.text) / seconds > limits.max_chars_per_second:
            return (f"{len(u.text)} characters of text for {seconds:.1f} s of audio ({len(u.text) / seconds:.0f}/s, "
                    f"over --max-chars-per-second {limits.max_chars_per_second:g}) in {u.audio}")
        return None
    return fault


def checked_records(path: str, fmt: str, refs_per_target: int, seed: int, limits: AudioLimits, workers: int,
                    text_tokenizer=None, text_limits: TextLimits = TextLimits(),
                    wanted=None) -> tuple[list[Record], list[Reject], dict[str, float]]:
    """The manifest's records (those whose index WANTED accepts) whose clips and text all pass, its rejects, and
    the seconds of every clip checked. Every clip is checked once before references are drawn; an utterance
    manifest draws references only from clips that passed, so a broken clip is rejected by its own line and costs
    a target only when its speaker has no usable reference left."""
    checks = ClipChecks(limits, workers)
    if fmt == "utterances":  # the first draws' clips, in parallel; a reference drawn again is checked on its own
        blind, _, _ = read_manifest(path, fmt, refs_per_target, seed, wanted=wanted)
        checks.prefetch(p for r in blind for p in r.audio)
    records, rejects, _ = read_manifest(path, fmt, refs_per_target, seed, wanted=wanted,
                                        fault=utterance_fault(checks, text_limits))
    records = [r for r in records if wanted is None or wanted(r.index)]
    rejects = [r for r in rejects if wanted is None or (r.index is not None and wanted(r.index))]
    checks.prefetch(p for r in records for p in r.audio)
    prompt = prompt_format(text_tokenizer) if text_tokenizer is not None else None
    good = []
    for r in records:
        bad = next((checks(p) for p in r.audio if isinstance(checks(p), str)), None)
        if bad is None:
            bad = _text_out_of_bounds(r, sum(checks(p) for p in r.audio), text_tokenizer, prompt, text_limits)
        if bad is None:
            good.append(r)
        else:
            rejects.append(Reject(r.source, bad, r.index))
    return good, sorted(rejects, key=lambda r: (r.index if r.index is not None else -1, r.source)), checks.seconds()


def _text_out_of_bounds(record: Record, seconds: float, tokenizer, prompt: str | None,
                        limits: TextLimits) -> str | None:
    """Why the record's text is out of bounds (or does not fit the prompt format PROMPT), or None."""
    chars = user_text_chars(record)
    if limits.max_chars_per_second and seconds > 0 and chars / seconds > limits.max_chars_per_second:
        return (f"{chars} characters of text for {seconds:.1f} s of audio ({chars / seconds:.0f}/s, over "
                f"--max-chars-per-second {limits.max_chars_per_second:g})")
    if tokenizer is None:
        return None
    try:
        tokens = count_text_tokens(prompt, record, tokenizer)
    except RecordError as e:
        return str(e)
    if tokens > limits.max_text_tokens:
        return f"{tokens} text tokens, over --max-text-tokens {limits.max_text_tokens}"
    return None


def validate_manifest(path: str, fmt: str = "auto", refs_per_target: int = 1, seed: int = 0,
                      limits: AudioLimits = AudioLimits(), workers: int = 4, text_tokenizer: str | None = None,
                      text_limits: TextLimits = TextLimits()) -> tuple[int, list[Reject]]:
    """(number of records, every problem) without encoding any audio: what `build` would reject."""
    fmt = read_manifest(path, fmt, refs_per_target, seed)[2]
    tok = load_text_tokenizer(text_tokenizer) if text_tokenizer else None
    good, rejects, _ = checked_records(path, fmt, refs_per_target, seed, limits, workers, tok, text_limits)
    return len(good) + len(rejects), rejects


def reject_verdict(rejects: list[Reject], total: int, max_fraction: float) -> tuple[bool, str]:
    """(whether REJECTS of TOTAL records are over --max-reject-fraction, one line saying so and why): the verdict
    `shards validate` and `shards build` share."""
    fraction = len(rejects) / max(1, total)
    over = fraction > max_fraction
    line = f"{len(rejects)} of {total} records rejected ({fraction:.1%}), " \
           f"{'over' if over else 'within'} --max-reject-fraction {max_fraction:.1%}"
    unpaired = [r.unpaired_speaker for r in rejects if r.unpaired_speaker is not None]
    if unpaired:
        speakers = sorted(set(unpaired))
        line += (f"; {len(unpaired)} of them are targets whose speaker has no other utterance to be their "
                 f"reference ({len(speakers)} speakers: {', '.join(speakers[:5])}{', ...' if len(speakers) > 5 else ''})")
        if over:
            needed = math.ceil(fraction * 1000) / 1000
            line += (f". Corpora like Common Voice have many speakers of one clip: to build without them pass "
                     f"--max-reject-fraction {needed:g}")
    return over, line


def _settings(cfg: BuildConfig, fmt: str, n_positions: int, encoder, text_tok) -> dict:
    from higgs_ds.data.codec import CODES_MADE_BY

    return {"format_version": FORMAT_VERSION, "manifest": str(Path(cfg.input).resolve()), "format": fmt,
            "positions": n_positions, "shard_size": cfg.shard_size,
            "num_shards": max(1, math.ceil(n_positions / cfg.shard_size)),
            "refs_per_target": cfg.refs_per_target, "seed": cfg.seed, "audio_tokenizer": encoder.checkpoint.spec,
            "audio_tokenizer_layout": encoder.checkpoint.layout, "codes_made_by": CODES_MADE_BY,
            "semantic_model": encoder.semantic.spec if encoder.semantic else None,
            "audio_tokenizer_fingerprint": encoder.fingerprint,
            "text_tokenizer": text_tok.name_or_path if text_tok is not None else None,
            # the stored ids' prompt: a tokenizer with Higgs TTS 3's special tokens builds for it, none for v2
            "prompt_format": prompt_format(text_tok) if text_tok is not None else CHATML,
            "limits": asdict(cfg.limits), "text_limits": asdict(cfg.text_limits),
            "num_codebooks": encoder.num_codebooks,
            "codebook_size": encoder.codebook_size, "frame_rate": encoder.frame_rate}


def _check_or_write_settings(out: Path, settings: dict) -> None:
    path = out / "build.json"
    if path.exists():
        old = json.loads(path.read_text())
        for key, value in settings.items():
            if old.get(key) != value:
                raise BuildFailed(f"{path} was written by a build with other settings ({key}: {old.get(key)!r} "
                                  f"there, {value!r} now); build into a new --out directory")
        return
    atomic_write(path, json.dumps(settings, indent=2, sort_keys=True))


def sidecar_path(out: Path, j: int) -> Path:
    """parts/shard-NNNNNN.json: shard j's checksum, totals, index rows and rejects, written once its tar is."""
    return out / "parts" / shard_name(j).replace(".tar", ".json")


def shard_done(out: Path, j: int) -> bool:
    side = sidecar_path(out, j)
    tar = out / shard_name(j)
    if not (side.is_file() and tar.is_file()):
        return False
    try:
        return json.loads(side.read_text())["bytes"] == tar.stat().st_size
    except (ValueError, KeyError):
        return False


def _write_shard(out: Path, j: int, records: list[Record], rejects: list[Reject], encoder, text_tok, text_fp,
                 seconds_of: dict[str, float]) -> dict:
    prompt = prompt_format(text_tok) if text_tok is not None else None
    from webdataset import TarWriter

    name = shard_name(j)
    rows: dict[str, list] = {k: [] for k in INDEX_COLUMNS if k != "speaker"}
    speakers: list[str | None] = []
    encode = lru_cache(maxsize=4096)(encoder.encode_file)
    buf = io.BytesIO()  # held whole anyway for its sha256; a failed write then leaves no half-closed tar stream
    writer = TarWriter(buf, encoder=False, mtime=0)
    for r in records:
        coded = [encode(p) for p in r.audio]
        codes = [c for c, _ in coded]
        secs = [seconds_of[p] for p in r.audio]
        tokens = None
        if text_tok is not None:
            ids, labels = record_tokens(prompt, r.to_json(), len(r.audio), text_tok)
            tokens = {"tokenizer": text_fp, "input": ids, "label": labels}
        offset = writer.tarstream.offset
        writer.write(sample_members(r, codes, [d for _, d in coded], secs, encoder.num_codebooks, tokens))
        target = sum(c.shape[1] for c, (i, role) in zip(codes, _audio_turns(r)) if role == "assistant"
                     and i >= r.start_index)
        rows["record"].append(r.index)
        rows["shard"].append(j)
        rows["offset"].append(offset)
        rows["size"].append(writer.tarstream.offset - offset)
        rows["text_tokens"].append(len(tokens["input"]) if tokens is not None else -1)
        rows["audio_frames"].append(sum(c.shape[1] for c in codes))
        rows["target_frames"].append(target)
        rows["n_audio"].append(len(codes))
        rows["seconds"].append(round(sum(secs), 6))
        speakers.append(r.speaker)
    writer.close()
    data = buf.getvalue()
    meta = {"shard": name, "samples": len(records), "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(),
            "audio_seconds": round(sum(rows["seconds"]), 3), "text_tokens": int(sum(rows["text_tokens"])),
            "audio_frames": int(sum(rows["audio_frames"])), "rows": rows, "speakers": speakers,
            "rejects": [x.to_json() for x in rejects]}
    atomic_write(out / name, data)
    atomic_write(sidecar_path(out, j), json.dumps(meta))
    log.info(f"wrote {name}: {len(records)} samples, {len(rejects)} rejected, {meta['audio_seconds']:.1f} s of audio")
    return meta


def _audio_turns(record: Record) -> list[tuple[int, str]]:
    return [(i, m["role"]) for i, m in enumerate(record.messages)
            for item in content_items(m["content"]) if item["type"] == "audio"]


def build_shards(cfg: BuildConfig) -> dict:
    """Build this part's shards (resuming: finished shards are kept), then join the index if every shard is done.
    A full disk ends the build with one message and no temporary files of this process left behind."""
    try:
        return _build_part(cfg)
    except OSError as e:
        if not no_space(e):
            raise
        for stale in Path(cfg.out).glob(f".*.tmp{os.getpid()}"):
            stale.unlink(missing_ok=True)
        raise BuildFailed(f"no space left on the device holding {e.filename or cfg.out}; free space or build into "
                          f"another --out, then run the same command again (finished shards are kept)") from None


def _open_encoder(cfg: BuildConfig):
    from higgs_ds.data.codec import AudioEncoder

    cache_dir = cfg.cache_dir or os.path.join(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"),
                                              "higgs-ds", "codes")
    encoder = AudioEncoder(cfg.audio_tokenizer, cache_dir, semantic_model=cfg.semantic_model)
    if encoder.checkpoint.converted:
        log.info(f"audio tokenizer {encoder.checkpoint.describe()}: codes come from boson_multimodal's "
                 f"HiggsAudioTokenizer on its weights, which can differ in some frames from what transformers' "
                 f"HiggsAudioV2TokenizerModel gives for the same audio (build.json: codes_made_by)")
    return encoder


def _build_part(cfg: BuildConfig) -> dict:
    out = Path(cfg.out)
    (out / "parts").mkdir(parents=True, exist_ok=True)
    part, nparts = cfg.part
    records, rejects, fmt = read_manifest(cfg.input, cfg.format, cfg.refs_per_target, cfg.seed)
    n_positions = max([r.index + 1 for r in records] + [r.index + 1 for r in rejects if r.index is not None] + [0])
    if n_positions == 0:
        raise BuildFailed(f"{cfg.input}: the manifest holds no records")
    encoder = _open_encoder(cfg)
    text_tok = load_text_tokenizer(cfg.text_tokenizer) if cfg.text_tokenizer else None
    settings = _settings(cfg, fmt, n_positions, encoder, text_tok)
    _check_or_write_settings(out, settings)
    num_shards = settings["num_shards"]
    mine = [j for j in range(num_shards) if j % nparts == part]
    pending = [j for j in mine if not shard_done(out, j)]
    pending_set = set(pending)
    for j in pending:  # torn writes of a killed run of this part (no other part writes these shards)
        for stale in out.glob(f".{shard_name(j)}.tmp*"):
            stale.unlink()
    log.info(f"{cfg.input}: {len(records) + len(rejects)} records ({fmt}); part {part}/{nparts}: {len(mine)} "
             f"of {num_shards} shards, {len(mine) - len(pending)} already done")

    def in_pending(index: int) -> bool:
        return index // cfg.shard_size in pending_set

    good, part_rejects, seconds_of = checked_records(cfg.input, fmt, cfg.refs_per_target, cfg.seed, cfg.limits,
                                                     cfg.workers, text_tok, cfg.text_limits, wanted=in_pending)
    for j in mine:
        if j not in pending:
            part_rejects_done = json.loads(sidecar_path(out, j).read_text())
            part_rejects += [Reject.from_json(x) for x in part_rejects_done["rejects"]]
    mine_set = set(mine)
    part_total = sum(1 for r in records if r.index // cfg.shard_size in mine_set) + \
        sum(1 for r in rejects if r.index is not None and r.index // cfg.shard_size in mine_set)
    _write_rejects(out / f"rejects.part-{part}-of-{nparts}.jsonl", part_rejects)
    for r in part_rejects[:20]:
        log.warning(f"rejected {r}")
    over, verdict = reject_verdict(part_rejects, part_total, cfg.max_reject_fraction)
    if over:
        raise BuildFailed(f"{verdict}; see {out / f'rejects.part-{part}-of-{nparts}.jsonl'}")
    _write_shards(cfg, pending, good, part_rejects, encoder, text_tok, seconds_of)
    summary = {"part": f"{part}/{nparts}", "shards_written": len(pending), "samples": len(good),
               "rejected": len(part_rejects), "encoded_files": encoder.encoded, "cache_hits": encoder.cache_hits,
               "encoded_seconds": round(encoder.encoded_seconds, 2)}
    if all(shard_done(out, j) for j in range(num_shards)):
        index = write_index(out)
        summary["index"] = str(out / "index.json")
        summary["total_samples"] = index["samples"]
    else:
        log.info(f"index not written yet: other parts still have shards to build (join later: higgs-ds shards merge "
                 f"{out})")
    return summary


def _write_shards(cfg: BuildConfig, pending: list[int], good: list[Record], rejects: list[Reject], encoder, text_tok,
                  seconds_of: dict[str, float]) -> None:
    """Each pending shard j: its records (index // shard_size == j), encoded, with its rejects in its sidecar."""
    by_shard: dict[int, list[Record]] = {j: [] for j in pending}
    for r in good:
        by_shard[r.index // cfg.shard_size].append(r)
    rejects_by_shard: dict[int, list[Reject]] = {j: [] for j in pending}
    for r in rejects:
        if r.index is not None and r.index // cfg.shard_size in rejects_by_shard:
            rejects_by_shard[r.index // cfg.shard_size].append(r)
    text_fp = text_tokenizer_fingerprint(text_tok) if text_tok is not None else None
    for j in pending:
        _write_shard(Path(cfg.out), j, by_shard[j], sorted(rejects_by_shard[j], key=lambda x: x.index), encoder,
                     text_tok, text_fp, seconds_of)


def _write_rejects(path: Path, rejects: list[Reject]) -> None:
    ordered = sorted(rejects, key=lambda x: (x.index if x.index is not None else -1, x.source))
    atomic_write(path, "".join(json.dumps(r.to_json()) + "\n" for r in ordered))


def write_index(out: str | Path) -> dict:
    """Join every shard's sidecar into index.json + index.npz and rejects.jsonl (what `shards merge` runs)."""
    out = Path(out)
    settings = json.loads((out / "build.json").read_text())
    missing = [shard_name(j) for j in range(settings["num_shards"]) if not shard_done(out, j)]
    if missing:
        raise ShardError(f"{out}: {len(missing)} shard(s) not built yet, e.g. {missing[0]}; run the remaining parts")
    sides = [json.loads(sidecar_path(out, j).read_text()) for j in range(settings["num_shards"])]
    speakers = sorted({s for side in sides for s in side["speakers"] if s is not None})
    speaker_id = {s: i for i, s in enumerate(speakers)}
    columns = {k: np.concatenate([np.asarray(side["rows"][k], dtype=dt) for side in sides])
               for k, dt in INDEX_COLUMNS.items() if k != "speaker"}
    columns["speaker"] = np.asarray([speaker_id[s] if s is not None else -1 for side in sides
                                     for s in side["speakers"]], dtype=np.int32)
    index = {"format_version": FORMAT_VERSION, "settings": settings, "samples": int(len(columns["record"])),
             "speakers": speakers,
             "shards": [{k: side[k] for k in ("shard", "samples", "bytes", "sha256", "audio_seconds", "text_tokens",
                                               "audio_frames")} for side in sides],
             "rejected": sum(len(side["rejects"]) for side in sides)}
    buf = io.BytesIO()
    np.savez(buf, **columns)
    atomic_write(out / "index.npz", buf.getvalue())
    atomic_write(out / "index.json", json.dumps(index, indent=1))
    _write_rejects(out / "rejects.jsonl", [Reject.from_json(x) for side in sides for x in side["rejects"]])
    return index
