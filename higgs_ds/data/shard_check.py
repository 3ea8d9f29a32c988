"""Look at a finished shard set: totals and percentiles (`shards inspect`), every byte checked (`shards verify`), and
a plain WebDataset read of one shard."""

from __future__ import annotations

import hashlib
import io
import logging
from pathlib import Path
from typing import Any

import numpy as np

from higgs_ds.data.sample_format import ShardError, decode_sample, sample_key
from higgs_ds.data.shard_index import ShardIndex

log = logging.getLogger(__name__)


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


def verify(root: str | Path) -> list[str]:
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
        log.info(f"{path}: {'ok' if not problems or not problems[-1].startswith(str(path)) else 'BAD'}")
    return problems


def iter_shard_samples(path: str | Path) -> Any:
    """Stream (record json, codes) from a shard file in order with WebDataset's tar reader (no index needed)."""
    import webdataset as wds

    def handler(exn):
        raise ShardError(f"{path}: {exn}") from None

    for sample in wds.WebDataset(str(path), shardshuffle=False, handler=handler, empty_check=False):
        members = {k: v for k, v in sample.items() if not k.startswith("__")}
        yield decode_sample(members, f"{path} sample {sample['__key__']}")
