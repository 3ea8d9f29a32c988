"""Shard-building figures: tokenizer encode speed, build throughput from cached codes, index load time at 1M samples.

Run: .venv/bin/python -m bench.shards
"""

from __future__ import annotations

import io
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import WORK, fixtures, replicated_chatml, speech, table, timed


def synthetic_index(root: Path, n: int) -> None:
    """A million-row index in our format, and the naive baseline: one JSON object per sample (JSONL)."""
    from higgs_ds.data.shard_index import FORMAT_VERSION, INDEX_COLUMNS

    rng = np.random.default_rng(0)
    cols = {k: rng.integers(0, 1000, n).astype(dt) for k, dt in INDEX_COLUMNS.items()}
    buf = io.BytesIO()
    np.savez(buf, **cols)
    (root / "index.npz").write_bytes(buf.getvalue())
    shards = [{"shard": f"shard-{j:06d}.tar", "samples": 1000, "bytes": 1, "sha256": "0" * 64, "audio_seconds": 1.0,
               "text_tokens": 1, "audio_frames": 1} for j in range(n // 1000)]
    (root / "index.json").write_text(json.dumps({"format_version": FORMAT_VERSION, "settings": {}, "samples": n,
                                                 "speakers": [f"spk{i}" for i in range(5000)], "shards": shards,
                                                 "rejected": 0}))
    with open(root / "baseline.jsonl", "w") as f:
        for i in range(n):
            f.write(json.dumps({k: int(v[i]) for k, v in cols.items()}) + "\n")


def main() -> list[tuple[str, str, str]]:
    from higgs_ds.data.codec import AudioEncoder
    from higgs_ds.data.shard_index import ShardIndex
    from higgs_ds.data.shards import BuildConfig, build_shards

    fx, sp = fixtures(), speech()
    rows = []
    enc = AudioEncoder(str(fx / "audio_tokenizer"), cache_dir=None, device="cpu")
    wavs = sorted((sp / "wavs").glob("*.wav"))
    enc.encode_file(wavs[0])  # warm-up (first call builds kernels)
    enc.encoded_seconds = 0.0
    t0 = time.perf_counter()
    for w in wavs:
        enc.encode_file(w)
    encode_s = time.perf_counter() - t0
    rows.append(("tokenizer encode, CPU", f"{enc.encoded_seconds / encode_s:.2f}",
                 f"audio s per s ({len(wavs)} clips, {enc.encoded_seconds:.0f} s of espeak-ng speech; fixture "
                 f"tokenizer, 113M params: the DAC widths are fixed in boson_multimodal's code)"))

    cache = WORK / "code-cache"
    out = Path(tempfile.mkdtemp(dir=WORK))
    # 360 records over the same 18 files
    cfg = dict(input=str(replicated_chatml(sp)), audio_tokenizer=str(fx / "audio_tokenizer"),
               text_tokenizer=str(fx / "tokenizer"), shard_size=100, cache_dir=str(cache))
    build_shards(BuildConfig(out=str(out / "warm"), **cfg))  # fills the cache
    n = len(ShardIndex.load(out / "warm"))
    k = [0]

    def cached_build():
        k[0] += 1
        build_shards(BuildConfig(out=str(out / f"b{k[0]}"), **cfg))

    t = timed(cached_build)
    rows.append(("build from cached codes", f"{n / t:.1f}", f"samples/s ({n} samples incl. validation, text "
                 f"tokens, tar writing, index); {n * encode_s / len(wavs) / t:.1f}x faster than encoding"))
    shutil.rmtree(out)

    big = Path(tempfile.mkdtemp(dir=WORK))
    synthetic_index(big, 1_000_000)
    ours = timed(lambda: ShardIndex.load(big))
    base = timed(lambda: [json.loads(line) for line in open(big / "baseline.jsonl")], repeat=1)
    rows.append(("index load, 1M samples", f"{ours * 1000:.0f} ms", f"vs {base:.1f} s for per-sample JSONL "
                 f"({base / ours:.0f}x)"))
    shutil.rmtree(big)
    return rows


if __name__ == "__main__":
    WORK.mkdir(parents=True, exist_ok=True)
    table("shards", main())
