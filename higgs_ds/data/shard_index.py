"""A shard set's index (index.json + index.npz): load it and read samples at their byte offsets; the reader training
uses. The root may be a local directory or an fsspec URL."""

from __future__ import annotations

import io
import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from higgs_ds.data.sample_format import ShardError, ShardSetError, member_key, read_sample_at, sample_key
from higgs_ds.files import is_url, open_binary, read_span

FORMAT_VERSION = 1


INDEX_COLUMNS = {  # per-sample index columns and their dtypes
    "record": np.int64, "shard": np.int32, "offset": np.int64, "size": np.int64, "text_tokens": np.int32,
    "audio_frames": np.int32, "target_frames": np.int32, "n_audio": np.int16, "seconds": np.float32,
    "speaker": np.int32,
}


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
        meta, codes = read_sample_at(f, int(self.rows["offset"][i]), int(self.rows["size"][i]), self.where(i))
        expected = sample_key(int(self.rows["record"][i]))
        if meta.get("key") != expected:
            raise ShardError(f"{self.where(i)}: the bytes at offset {int(self.rows['offset'][i])} hold sample "
                             f"{meta.get('key')}, not {expected}: the shard changed after it was indexed "
                             f"(`higgs-ds shards verify {self.root}`)")
        return meta, codes

    def check_files(self) -> None:
        """Every shard the index names exists with the size it had when indexed: one stat per shard (one listing
        for a URL), so a deleted, truncated or replaced shard stops a run before it trains on a part of the data."""
        if is_url(self.root):
            import fsspec

            fs, path = fsspec.core.url_to_fs(self.root)
            sizes = {Path(e["name"]).name: e["size"] for e in fs.ls(path, detail=True)}
        else:
            sizes = {s["shard"]: os.stat(self.shard_path(j)).st_size
                     for j, s in enumerate(self.meta["shards"]) if os.path.exists(self.shard_path(j))}
        problems = [f"{s['shard']} is missing" if s["shard"] not in sizes else
                    f"{s['shard']} has {sizes[s['shard']]} bytes, index.json says {s['bytes']}"
                    for s in self.meta["shards"] if sizes.get(s["shard"]) != s["bytes"]]
        if problems:
            raise ShardSetError(f"{self.root}: {len(problems)} of {len(self.meta['shards'])} shards do not match "
                             f"index.json ({'; '.join(problems[:3])}{'; ...' if len(problems) > 3 else ''}). "
                             f"Rebuild the set, or see `higgs-ds shards verify {self.root}`")
        self.check_first_samples()

    def check_first_samples(self) -> None:
        """Every shard holds, at its first sample's offset, the tar header of the sample the index names there: one
        512-byte read a shard (a ranged GET for a URL), so a shard swapped for another of the same size stops a run
        before training."""
        shard, offset = self.rows["shard"], self.rows["offset"]
        order = np.lexsort((offset, shard))
        _, at = np.unique(shard[order], return_index=True)
        firsts = order[at]

        def problem(i: int) -> str | None:
            j, off = int(shard[i]), int(offset[i])
            expected = sample_key(int(self.rows["record"][i]))
            found = member_key(read_span(self.shard_path(j), off, 512))
            if found == expected:
                return None
            what = f"sample {found}" if found else "no tar header"
            return f"{self.meta['shards'][j]['shard']} has {what} at byte {off}, where index.json puts its first " \
                   f"sample {expected}"

        if is_url(self.root) and len(firsts) > 1:
            with ThreadPoolExecutor(16) as pool:
                problems = [p for p in pool.map(problem, firsts.tolist()) if p]
        else:
            problems = [p for p in map(problem, firsts.tolist()) if p]
        if problems:
            raise ShardSetError(f"{self.root}: {len(problems)} of {len(self.meta['shards'])} shards are not the "
                                f"shards index.json was built from ({'; '.join(problems[:3])}"
                                f"{'; ...' if len(problems) > 3 else ''}): a shard copied over another, or a "
                                f"different build's shard. Rebuild the set, or see `higgs-ds shards verify "
                                f"{self.root}`")
