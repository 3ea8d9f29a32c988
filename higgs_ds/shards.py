"""Build, index, inspect and verify WebDataset shards of ChatML records with pre-tokenized audio codes.

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
import math
import os
import re
import tarfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from higgs_ds.audio import AudioError, AudioLimits, check_audio
from higgs_ds.chatml import Record, RecordError, Reject, read_manifest

FORMAT_VERSION = 1
INDEX_COLUMNS = {  # per-sample index columns and their dtypes
    "record": np.int64, "shard": np.int32, "offset": np.int64, "size": np.int64, "text_tokens": np.int32,
    "audio_frames": np.int32, "target_frames": np.int32, "n_audio": np.int16, "seconds": np.float32,
    "speaker": np.int32,
}


class ShardError(RuntimeError):
    """A shard set is incomplete, corrupt or inconsistent; the message names the file."""


class BuildFailed(RuntimeError):
    """The build stopped on purpose (too many rejects, mismatched settings)."""


def shard_name(j: int) -> str:
    return f"shard-{j:06d}.tar"


def sample_key(index: int) -> str:
    return f"s{index:09d}"  # no dots: WebDataset splits keys at the first dot


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
    semantic_model: str | None = None  # where the audio tokenizer's semantic model is (default: its hub id)


def parse_part(text: str) -> tuple[int, int]:
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise ValueError(f"--part must look like I/N (e.g. 0/4), got {text!r}") from None
    if not (n >= 1 and 0 <= i < n):
        raise ValueError(f"--part {text}: need 0 <= I < N")
    return i, n


# ----------------------------------------------------------------------------------------------- validation

def load_text_tokenizer(name_or_path: str):
    """The tokenizer, with its resolved name (`tokenizer.name_or_path` is then that name, not a cache path)."""
    from transformers import AutoTokenizer

    from higgs_ds.hub import resolve

    checkpoint = resolve(name_or_path, "text_tokenizer")
    tokenizer = AutoTokenizer.from_pretrained(str(checkpoint.path))
    tokenizer.name_or_path = checkpoint.spec
    return tokenizer


def text_tokenizer_fingerprint(tokenizer) -> str:
    """Identifies a text tokenizer by content: pre-tokenized ids in shards are used only with the same one."""
    h = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    h.update(backend.to_str().encode() if backend is not None else json.dumps(tokenizer.get_vocab(),
                                                                              sort_keys=True).encode())
    h.update(json.dumps(tokenizer.special_tokens_map, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


def chatml_tokens(record: dict, n_audio: int, tokenizer) -> tuple[list[int], list[int]]:
    """(input ids, label ids) of a ChatML record (messages, start_index, speaker) through boson_multimodal's own
    `prepare_chatml_sample` (which prints and hides its errors: they become a RecordError here)."""
    from boson_multimodal.dataset.chatml_dataset import prepare_chatml_sample

    with open(os.devnull, "w") as devnull:
        import contextlib

        with contextlib.redirect_stdout(devnull):
            input_tokens, label_tokens, audio_contents, _ = prepare_chatml_sample(record, tokenizer)
    if input_tokens is None:
        raise RecordError("boson_multimodal's prepare_chatml_sample rejected the record")
    if len(audio_contents) != n_audio:
        raise RecordError(f"prepare_chatml_sample found {len(audio_contents)} audio items, expected {n_audio}")
    return input_tokens, label_tokens


def count_text_tokens(record: Record, tokenizer) -> int:
    return len(chatml_tokens(record.to_json(), len(record.audio), tokenizer)[0])


def validate_records(records: list[Record], limits: AudioLimits, workers: int = 4,
                     text_tokenizer=None) -> tuple[list[Record], list[Reject], dict[str, float]]:
    """Decode every referenced audio file once and check it; returns (valid records, rejects, seconds per path)."""
    paths = sorted({p for r in records for p in r.audio})

    def check(path: str) -> tuple[str, float | str]:
        try:
            return path, check_audio(path, limits)
        except AudioError as e:
            return path, str(e)

    with ThreadPoolExecutor(max(1, workers)) as pool:
        results = dict(pool.map(check, paths))
    good, rejects = [], []
    seconds = {p: v for p, v in results.items() if isinstance(v, float)}
    for r in records:
        bad = next((results[p] for p in r.audio if isinstance(results[p], str)), None)
        if bad is None and text_tokenizer is not None:
            try:
                count_text_tokens(r, text_tokenizer)
            except RecordError as e:
                bad = str(e)
        if bad is None:
            good.append(r)
        else:
            rejects.append(Reject(r.source, bad, r.index))
    return good, rejects, seconds


def validate_manifest(path: str, fmt: str = "auto", refs_per_target: int = 1, seed: int = 0,
                      limits: AudioLimits = AudioLimits(), workers: int = 4,
                      text_tokenizer: str | None = None) -> tuple[int, list[Reject]]:
    """(number of records, every problem) without encoding any audio."""
    records, rejects, _ = read_manifest(path, fmt, refs_per_target, seed)
    tok = load_text_tokenizer(text_tokenizer) if text_tokenizer else None
    good, audio_rejects, _ = validate_records(records, limits, workers, tok)
    all_rejects = sorted(rejects + audio_rejects, key=lambda r: (r.index if r.index is not None else -1, r.source))
    return len(good) + len(all_rejects), all_rejects


# ----------------------------------------------------------------------------------------------- sample codec

def encode_npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


_NPY_HEADER = re.compile(rb"\{'descr': '([<>|=]?[a-z]\d+)', 'fortran_order': (False|True), "
                         rb"'shape': \(((?:\d+, ?)*\d*)\), \} *\n")


def decode_npy(data: bytes) -> np.ndarray:
    """An .npy payload without pickle. The header numpy writes for plain arrays is matched directly (numpy's own
    parser runs ast.literal_eval, half the read cost of a sample); any other header goes through numpy."""
    m = _NPY_HEADER.match(data, 10) if data[:8] == b"\x93NUMPY\x01\x00" else None
    if m is not None and m.end() == 10 + int.from_bytes(data[8:10], "little"):
        dtype, fortran = np.dtype(m[1].decode()), m[2] == b"True"
        shape = tuple(int(d) for d in m[3].split(b",") if d.strip())
        start = m.end()
    else:
        buf = io.BytesIO(data)
        version = np.lib.format.read_magic(buf)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
            np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read_header(buf)
        start = buf.tell()
    if dtype.hasobject:
        raise ValueError("object arrays are not allowed in shards")
    arr = np.frombuffer(data, dtype=dtype, count=math.prod(shape), offset=start)
    return arr.reshape(shape, order="F" if fortran else "C")


def sample_members(record: Record, codes: list[np.ndarray], digests: list[str], seconds: list[float],
                   num_codebooks: int, tokens: dict | None = None) -> dict:
    meta = record.to_json()
    if tokens is not None:
        meta["tokens"] = tokens  # {"tokenizer": fingerprint, "input": [...], "label": [...]}
    meta.update(key=sample_key(record.index), index=record.index, source=record.source,
                audio=[{"path": p, "sha256": d, "frames": int(c.shape[1]), "seconds": round(s, 6)}
                       for p, c, d, s in zip(record.audio, codes, digests, seconds)])
    all_codes = np.concatenate(codes, axis=1).astype(np.int16) if codes else np.zeros((num_codebooks, 0), np.int16)
    return {"__key__": sample_key(record.index), "json": json.dumps(meta, sort_keys=True).encode(),
            "codes.npy": encode_npy(all_codes)}


def decode_sample(members: dict[str, bytes], where: str) -> tuple[dict, np.ndarray]:
    """(record json, int16 codes) from a sample's tar members, or ShardError naming `where`."""
    if set(members) != {"json", "codes.npy"}:
        raise ShardError(f"{where}: expected members .json and .codes.npy, found {sorted(members)}")
    try:
        meta = json.loads(members["json"])
        codes = decode_npy(members["codes.npy"])
    except (ValueError, UnicodeDecodeError, EOFError) as e:
        raise ShardError(f"{where}: does not decode: {e}") from None
    frames = sum(a["frames"] for a in meta.get("audio", []))
    if codes.dtype != np.int16 or codes.ndim != 2 or codes.shape[1] != frames:
        raise ShardError(f"{where}: codes have dtype {codes.dtype} shape {codes.shape}, expected int16 (8, {frames})")
    return meta, codes


def span_members(data: bytes, where: str) -> dict[str, bytes]:
    """Members of a sample's byte span: plain ustar headers (what TarWriter writes for short names) parsed
    directly, checksums verified; anything else goes through tarfile."""
    members, pos = {}, 0
    while pos + 512 <= len(data):
        header = data[pos:pos + 512]
        if header[156:157] not in (b"0", b"\0") or not header[257:262] == b"ustar":
            return span_members_tarfile(data, where)
        try:
            stored = int(header[148:156].split(b"\0")[0].strip() or b"0", 8)
            size = int(header[124:136].split(b"\0")[0].strip() or b"0", 8)
        except ValueError:
            raise ShardError(f"{where}: corrupt tar header at byte {pos}") from None
        if stored != sum(header) - sum(header[148:156]) + 256:
            raise ShardError(f"{where}: corrupt tar header at byte {pos} (checksum mismatch)")
        name = header[:100].split(b"\0")[0].decode("utf-8", "replace")
        if pos + 512 + size > len(data):
            raise ShardError(f"{where}: truncated member {name}")
        members[name.partition(".")[2]] = data[pos + 512:pos + 512 + size]
        pos += 512 + (size + 511) // 512 * 512
    return members


def span_members_tarfile(data: bytes, where: str) -> dict[str, bytes]:
    members: dict[str, bytes] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            for m in tar:
                members[m.name.partition(".")[2]] = tar.extractfile(m).read()
    except (tarfile.TarError, EOFError, OSError) as e:
        raise ShardError(f"{where}: corrupt tar data: {e}") from None
    return members


def read_sample_at(f, offset: int, size: int, where: str) -> tuple[dict, np.ndarray]:
    """Read one sample by seeking to its byte span in an open shard (the index holds offset and size)."""
    f.seek(offset)
    data = f.read(size)
    if len(data) != size:
        raise ShardError(f"{where}: truncated (wanted {size} bytes at offset {offset}, got {len(data)})")
    return decode_sample(span_members(data, where), where)


# ----------------------------------------------------------------------------------------------- build

def _settings(cfg: BuildConfig, fmt: str, n_positions: int, encoder, text_tokenizer: str | None) -> dict:
    return {"format_version": FORMAT_VERSION, "manifest": str(Path(cfg.input).resolve()), "format": fmt,
            "positions": n_positions, "shard_size": cfg.shard_size,
            "num_shards": max(1, math.ceil(n_positions / cfg.shard_size)),
            "refs_per_target": cfg.refs_per_target, "seed": cfg.seed, "audio_tokenizer": encoder.checkpoint.spec,
            "semantic_model": encoder.semantic.spec if encoder.semantic else None,
            "audio_tokenizer_fingerprint": encoder.fingerprint, "text_tokenizer": text_tokenizer,
            "limits": asdict(cfg.limits), "num_codebooks": encoder.num_codebooks,
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
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(settings, indent=2, sort_keys=True))
    os.replace(tmp, path)


def shard_done(out: Path, j: int) -> bool:
    side = out / "parts" / shard_name(j).replace(".tar", ".json")
    tar = out / shard_name(j)
    if not (side.is_file() and tar.is_file()):
        return False
    try:
        return json.loads(side.read_text())["bytes"] == tar.stat().st_size
    except (ValueError, KeyError):
        return False


def _write_shard(out: Path, j: int, records: list[Record], rejects: list[Reject], encoder, text_tok, text_fp,
                 seconds_of: dict[str, float], log) -> dict:
    from webdataset import TarWriter

    name = shard_name(j)
    tmp = out / f".{name}.tmp{os.getpid()}"
    rows: dict[str, list] = {k: [] for k in INDEX_COLUMNS if k != "speaker"}
    speakers: list[str | None] = []
    encode = lru_cache(maxsize=4096)(encoder.encode_file)
    with open(tmp, "wb") as f:
        writer = TarWriter(f, encoder=False, mtime=0)
        for r in records:
            coded = [encode(p) for p in r.audio]
            codes = [c for c, _ in coded]
            secs = [seconds_of[p] for p in r.audio]
            tokens = None
            if text_tok is not None:
                ids, labels = chatml_tokens(r.to_json(), len(r.audio), text_tok)
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
    data = tmp.read_bytes()
    meta = {"shard": name, "samples": len(records), "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(),
            "audio_seconds": round(sum(rows["seconds"]), 3), "text_tokens": int(sum(rows["text_tokens"])),
            "audio_frames": int(sum(rows["audio_frames"])), "rows": rows, "speakers": speakers,
            "rejects": [x.to_json() for x in rejects]}
    os.replace(tmp, out / name)
    side = out / "parts" / name.replace(".tar", ".json")
    side_tmp = side.with_suffix(f".tmp{os.getpid()}")
    side_tmp.write_text(json.dumps(meta))
    os.replace(side_tmp, side)
    log(f"wrote {name}: {len(records)} samples, {len(rejects)} rejected, {meta['audio_seconds']:.1f} s of audio")
    return meta


def _audio_turns(record: Record) -> list[tuple[int, str]]:
    from higgs_ds.chatml import content_items

    return [(i, m["role"]) for i, m in enumerate(record.messages)
            for item in content_items(m["content"]) if item["type"] == "audio"]


def build_shards(cfg: BuildConfig, log=print) -> dict:
    """Build this part's shards (resuming: finished shards are kept), then join the index if every shard is done."""
    from higgs_ds.codec import AudioEncoder

    out = Path(cfg.out)
    (out / "parts").mkdir(parents=True, exist_ok=True)
    part, nparts = cfg.part
    records, rejects, fmt = read_manifest(cfg.input, cfg.format, cfg.refs_per_target, cfg.seed)
    n_positions = max([r.index + 1 for r in records] + [r.index + 1 for r in rejects if r.index is not None] + [0])
    if n_positions == 0:
        raise BuildFailed(f"{cfg.input}: the manifest holds no records")
    cache_dir = cfg.cache_dir or os.path.join(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"),
                                              "higgs-ds", "codes")
    encoder = AudioEncoder(cfg.audio_tokenizer, cache_dir, semantic_model=cfg.semantic_model)
    text_tok = load_text_tokenizer(cfg.text_tokenizer) if cfg.text_tokenizer else None
    settings = _settings(cfg, fmt, n_positions, encoder, text_tok.name_or_path if text_tok is not None else None)
    _check_or_write_settings(out, settings)
    num_shards = settings["num_shards"]
    mine = [j for j in range(num_shards) if j % nparts == part]
    pending = [j for j in mine if not shard_done(out, j)]
    for j in pending:  # torn writes of a killed run of this part (no other part writes these shards)
        for stale in out.glob(f".{shard_name(j)}.tmp*"):
            stale.unlink()
    log(f"{cfg.input}: {len(records) + len(rejects)} records ({fmt}); part {part}/{nparts}: {len(mine)} of "
        f"{num_shards} shards, {len(mine) - len(pending)} already done")

    def in_pending(index: int) -> bool:
        return index // cfg.shard_size in pending

    todo = [r for r in records if in_pending(r.index)]
    good, audio_rejects, seconds_of = validate_records(todo, cfg.limits, cfg.workers, text_tok)
    part_rejects = [r for r in rejects if r.index is not None and in_pending(r.index)] + audio_rejects
    for j in mine:
        if j not in pending:
            part_rejects_done = json.loads((out / "parts" / shard_name(j).replace(".tar", ".json")).read_text())
            part_rejects += [Reject(x["source"], x["reason"], x["index"]) for x in part_rejects_done["rejects"]]
    part_total = sum(1 for r in records if r.index // cfg.shard_size in mine) + \
        sum(1 for r in rejects if r.index is not None and r.index // cfg.shard_size in mine)
    _write_rejects(out / f"rejects.part-{part}-of-{nparts}.jsonl", part_rejects)
    fraction = len(part_rejects) / max(1, part_total)
    for r in part_rejects[:20]:
        log(f"rejected {r}")
    if fraction > cfg.max_reject_fraction:
        raise BuildFailed(f"{len(part_rejects)} of {part_total} records rejected ({fraction:.1%}), over "
                          f"--max-reject-fraction {cfg.max_reject_fraction:.1%}; see "
                          f"{out / f'rejects.part-{part}-of-{nparts}.jsonl'}")
    by_shard: dict[int, list[Record]] = {j: [] for j in pending}
    for r in good:
        by_shard[r.index // cfg.shard_size].append(r)
    rejects_by_shard: dict[int, list[Reject]] = {j: [] for j in pending}
    for r in part_rejects:
        if r.index is not None and r.index // cfg.shard_size in rejects_by_shard:
            rejects_by_shard[r.index // cfg.shard_size].append(r)
    text_fp = text_tokenizer_fingerprint(text_tok) if text_tok is not None else None
    for j in pending:
        _write_shard(out, j, by_shard[j], sorted(rejects_by_shard[j], key=lambda x: x.index), encoder, text_tok,
                     text_fp, seconds_of, log)
    summary = {"part": f"{part}/{nparts}", "shards_written": len(pending), "samples": len(good),
               "rejected": len(part_rejects), "encoded_files": encoder.encoded, "cache_hits": encoder.cache_hits,
               "encoded_seconds": round(encoder.encoded_seconds, 2)}
    if all(shard_done(out, j) for j in range(num_shards)):
        index = write_index(out)
        summary["index"] = str(out / "index.json")
        summary["total_samples"] = index["samples"]
    else:
        log(f"index not written yet: other parts still have shards to build (join later: higgs-ds shards merge {out})")
    return summary


def _write_rejects(path: Path, rejects: list[Reject]) -> None:
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    with open(tmp, "w") as f:
        for r in sorted(rejects, key=lambda x: (x.index if x.index is not None else -1, x.source)):
            f.write(json.dumps(r.to_json()) + "\n")
    os.replace(tmp, path)


# ----------------------------------------------------------------------------------------------- index

def write_index(out: str | Path) -> dict:
    """Join every shard's sidecar into index.json + index.npz and rejects.jsonl (what `shards merge` runs)."""
    out = Path(out)
    settings = json.loads((out / "build.json").read_text())
    missing = [shard_name(j) for j in range(settings["num_shards"]) if not shard_done(out, j)]
    if missing:
        raise ShardError(f"{out}: {len(missing)} shard(s) not built yet, e.g. {missing[0]}; run the remaining parts")
    sides = [json.loads((out / "parts" / shard_name(j).replace(".tar", ".json")).read_text())
             for j in range(settings["num_shards"])]
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
    _atomic_write(out / "index.npz", buf.getvalue())
    _atomic_write(out / "index.json", json.dumps(index, indent=1).encode())
    _write_rejects(out / "rejects.jsonl", [Reject(x["source"], x["reason"], x["index"])
                                           for side in sides for x in side["rejects"]])
    return index


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(path.suffix + f".tmp{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def is_url(path: str | Path) -> bool:
    return "://" in str(path)


def open_binary(path: str | Path):
    """A seekable binary file for a local path or an fsspec URL (s3://, gs://, http(s)://, file://); no shell."""
    if is_url(path):
        import fsspec

        return fsspec.open(str(path), "rb").open()
    return open(path, "rb")


@dataclass
class ShardIndex:
    """A shard set's index: `meta` from index.json, one numpy column per sample field in `rows`. The root may be a
    local directory or an fsspec URL."""

    root: str
    meta: dict
    rows: dict[str, np.ndarray]

    @classmethod
    def load(cls, root: str | Path) -> "ShardIndex":
        root = str(root).rstrip("/")
        try:
            with open_binary(f"{root}/index.json") as f:
                meta = json.loads(f.read())
            with open_binary(f"{root}/index.npz") as f:
                data = f.read()
        except FileNotFoundError:
            raise ShardError(f"{root}: no index.json/index.npz (is this a shard directory, and did every part "
                             f"finish? `higgs-ds shards merge {root}` joins finished parts)") from None
        if meta.get("format_version") != FORMAT_VERSION:
            raise ShardError(f"{root}/index.json: format_version {meta.get('format_version')}, this higgs-ds reads "
                             f"{FORMAT_VERSION}")
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            rows = {k: z[k] for k in z.files}
        return cls(root, meta, rows)

    def __len__(self) -> int:
        return len(self.rows["record"])

    def shard_path(self, j: int) -> str:
        return f"{self.root}/{self.meta['shards'][j]['shard']}"

    def speaker(self, i: int) -> str | None:
        s = int(self.rows["speaker"][i])
        return self.meta["speakers"][s] if s >= 0 else None

    def where(self, i: int) -> str:
        return f"{self.shard_path(int(self.rows['shard'][i]))} sample {sample_key(int(self.rows['record'][i]))}"

    def read(self, i: int, f=None) -> tuple[dict, np.ndarray]:
        if f is None:
            with open_binary(self.shard_path(int(self.rows["shard"][i]))) as fh:
                return self.read(i, fh)
        return read_sample_at(f, int(self.rows["offset"][i]), int(self.rows["size"][i]), self.where(i))


def inspect(root: str | Path) -> dict:
    idx = ShardIndex.load(root)
    r = idx.rows
    pct = [50, 90, 99, 100]

    def percentiles(a: np.ndarray) -> dict:
        return {f"p{p}": float(np.percentile(a, p)) if len(a) else 0.0 for p in pct}

    return {"root": idx.root, "shards": len(idx.meta["shards"]), "samples": len(idx),
            "rejected": idx.meta["rejected"], "hours": round(float(r["seconds"].sum()) / 3600, 4),
            "speakers": len(idx.meta["speakers"]),
            "bytes": sum(s["bytes"] for s in idx.meta["shards"]),
            "seconds_per_sample": percentiles(r["seconds"]),
            "audio_frames_per_sample": percentiles(r["audio_frames"]),
            "text_tokens_per_sample": percentiles(r["text_tokens"]) if (r["text_tokens"] >= 0).all() else None}


def verify(root: str | Path, log=print) -> list[str]:
    """Every problem found (empty when the set is sound): checksums, counts, every sample decodes and matches."""
    root = Path(root)
    try:
        idx = ShardIndex.load(root)
    except (ShardError, ValueError, OSError, KeyError) as e:
        return [str(e)]
    problems = []
    settings = idx.meta["settings"]
    num_codebooks, codebook_size = settings["num_codebooks"], settings.get("codebook_size", 1024)  # older sets: 1024
    for j, shard in enumerate(idx.meta["shards"]):
        path = root / shard["shard"]
        if not path.is_file():
            problems.append(f"{path}: missing")
            continue
        data = path.read_bytes()
        if len(data) != shard["bytes"]:
            problems.append(f"{path}: {len(data)} bytes, index says {shard['bytes']} (truncated or replaced)")
            continue
        if hashlib.sha256(data).hexdigest() != shard["sha256"]:
            problems.append(f"{path}: sha256 mismatch (corrupt or modified)")
            continue
        rows = np.flatnonzero(idx.rows["shard"] == j)
        if len(rows) != shard["samples"]:
            problems.append(f"{path}: index has {len(rows)} rows, shard entry says {shard['samples']}")
        f = io.BytesIO(data)
        for i in rows:
            try:
                meta, codes = idx.read(int(i), f)
                if meta["key"] != sample_key(int(idx.rows["record"][i])):
                    raise ShardError(f"{path}: sample at offset {idx.rows['offset'][i]} is {meta['key']}, index "
                                     f"expects {sample_key(int(idx.rows['record'][i]))}")
                if codes.shape != (num_codebooks, int(idx.rows["audio_frames"][i])):
                    raise ShardError(f"{path} {meta['key']}: codes shape {codes.shape} != index")
                if codes.size and (codes.min() < 0 or codes.max() >= codebook_size):
                    raise ShardError(f"{path} {meta['key']}: codes outside [0, {codebook_size})")
            except ShardError as e:
                problems.append(str(e))
                break
        log(f"{path}: {'ok' if not problems or not problems[-1].startswith(str(path)) else 'BAD'}")
    return problems


def iter_shard_samples(path: str | Path) -> Any:
    """Stream (record json, codes) from a shard file in order with WebDataset's tar reader (no index needed)."""
    import webdataset as wds

    def handler(exn):
        raise ShardError(f"{path}: {exn}") from None

    for sample in wds.WebDataset(str(path), shardshuffle=False, handler=handler, empty_check=False):
        members = {k: v for k, v in sample.items() if not k.startswith("__")}
        yield decode_sample(members, f"{path} sample {sample['__key__']}")
