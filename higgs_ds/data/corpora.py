"""Importers from the on-disk layouts public speech corpora ship in to our utterance manifest (`audio`, `text`,
`speaker`, and `language` / `duration` where the corpus states them). Every entry left out is a reject naming the
corpus file and line (or member) and why; nothing valid is dropped.

Audio stored inside records (Hugging Face parquet `{bytes, path}`, WebDataset tars of mp3 + json, segments of
longer recordings) is written out to files under the audio directory, so the shard builder, its code cache and a
listener all see ordinary files. No importer decodes audio: `shards validate` does, with the manifest's lines.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Iterator

from higgs_ds.data import corpus_readers as r
from higgs_ds.data.chatml import Reject
from higgs_ds.data.corpus_entries import Entry, ImportOptions
from higgs_ds.files import atomic_write

IMPORTERS: dict[str, Callable[[Path, ImportOptions], Iterator[Entry]]] = {
    "ljspeech": r.ljspeech, "libritts": r.libritts, "vctk": r.vctk, "commonvoice": r.commonvoice, "emilia": r.emilia,
    "hf-parquet": r.hf_parquet, "nemo": r.nemo, "kaldi": r.kaldi, "folder": r.folder}
FORMATS = tuple(IMPORTERS)


def import_corpus(fmt: str, src: str | Path, opts: ImportOptions) -> tuple[list[dict], list[Reject]]:
    if fmt not in IMPORTERS:
        raise ValueError(f"unknown corpus format {fmt!r} (one of {', '.join(FORMATS)})")
    if opts.text not in ("normalized", "original"):
        raise ValueError(f"--text must be normalized or original, got {opts.text!r}")
    src = Path(src)
    if not src.exists():
        raise FileNotFoundError(f"{src} does not exist")
    utterances, rejects = [], []
    for entry in IMPORTERS[fmt](src, opts):
        (rejects if isinstance(entry, Reject) else utterances).append(entry)
    return utterances, rejects


def write_manifest(path: str | Path, utterances: list[dict]) -> None:
    atomic_write(path, "".join(json.dumps(u, ensure_ascii=False) + "\n" for u in utterances))


def rejects_path(manifest: str | Path) -> Path:
    manifest = Path(manifest)
    return manifest.with_name(manifest.name.rsplit(".", 1)[0] + ".rejects.jsonl")


def write_rejects(manifest: str | Path, rejects: list[Reject]) -> Path:
    path = rejects_path(manifest)
    atomic_write(path, "".join(json.dumps(r.to_json(), ensure_ascii=False) + "\n" for r in rejects))
    return path


def summarize(utterances: list[dict]) -> dict:
    speakers = {u["speaker"] for u in utterances}
    seconds = [u["duration"] for u in utterances if "duration" in u]
    return {"utterances": len(utterances), "speakers": len(speakers),
            "languages": sorted({u["language"] for u in utterances if "language" in u}),
            "hours": round(sum(seconds) / 3600, 3) if len(seconds) == len(utterances) and seconds else None}
