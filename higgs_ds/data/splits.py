"""Speaker-disjoint splits of an utterance manifest, and listening prompts paired inside one split: a zero-shot
evaluation needs speakers training never saw, with references from the same side, so nothing leaks across."""

from __future__ import annotations

import json
import random
import re
from collections import defaultdict
from pathlib import Path

from higgs_ds.data.chatml import read_utterances
from higgs_ds.files import atomic_write


def _write(path: Path, rows: list[dict]) -> None:
    atomic_write(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def split_manifest(manifest: str | Path, out_dir: str | Path, val_speakers: int | None = None,
                   val_fraction: float | None = None, heldout_fraction: float = 0.0, seed: int = 0) -> dict:
    """OUT_DIR/train.jsonl and val.jsonl with no speaker on both sides, and (HELDOUT_FRACTION > 0) heldout.jsonl:
    that share of each training speaker's utterances, held out of train (seen speakers, unseen utterances).

    Val speakers come from a seeded shuffle of the speakers with at least two utterances (a speaker needs a
    reference besides its target): VAL_SPEAKERS of them, or (VAL_FRACTION) as many as it takes to hold that share
    of the utterances."""
    if (val_speakers is None) == (val_fraction is None):
        raise ValueError("give one of --val-speakers N or --val-fraction F")
    if val_fraction is not None and not 0 < val_fraction < 1:
        raise ValueError(f"--val-fraction must be in (0, 1), got {val_fraction}")
    if not 0 <= heldout_fraction < 1:
        raise ValueError(f"--heldout-fraction must be in [0, 1), got {heldout_fraction}")
    manifest = Path(manifest)
    utts, rejects = read_utterances(manifest)
    if rejects:
        raise ValueError(f"{len(rejects)} bad lines in {manifest}, e.g. {rejects[0]}; fix them (shards validate "
                         f"lists every one) before splitting")
    lines = [json.loads(x) for x in manifest.read_text(encoding="utf-8-sig").splitlines() if x.strip()]
    for line, u in zip(lines, utts):  # the split lands elsewhere: audio paths must not stay relative
        line["audio"] = str(Path(u.audio).resolve())
    by_speaker: dict[str, list[int]] = defaultdict(list)
    for i, u in enumerate(utts):
        by_speaker[u.speaker].append(i)
    rng = random.Random(seed)
    candidates = sorted(s for s, idx in by_speaker.items() if len(idx) >= 2)
    rng.shuffle(candidates)
    if val_speakers is not None:
        if not 1 <= val_speakers < len(by_speaker):
            raise ValueError(f"--val-speakers {val_speakers}: the manifest has {len(by_speaker)} speakers")
        if val_speakers > len(candidates):
            raise ValueError(f"--val-speakers {val_speakers}: only {len(candidates)} speakers have two or more "
                             f"utterances")
        val = set(candidates[:val_speakers])
    else:
        val, count = set(), 0
        for s in candidates:
            if count >= val_fraction * len(utts):
                break
            val.add(s)
            count += len(by_speaker[s])
        if len(val) == len(by_speaker):
            raise ValueError(f"--val-fraction {val_fraction} takes every speaker; lower it")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    train, heldout = [], []
    for s in sorted(set(by_speaker) - val):
        idx = list(by_speaker[s])
        random.Random(f"{seed}:{s}").shuffle(idx)
        k = int(len(idx) * heldout_fraction)
        heldout += idx[:k]
        train += idx[k:]
    parts = {"train": sorted(train), "val": sorted(i for s in val for i in by_speaker[s]), "heldout": sorted(heldout)}
    for name, idx in parts.items():
        if name != "heldout" or heldout_fraction:
            _write(out / f"{name}.jsonl", [lines[i] for i in idx])
    info = {"manifest": str(manifest.resolve()), "seed": seed, "val_speakers": sorted(val),
            **{f"{name}_utterances": len(idx) for name, idx in parts.items()},
            "train_speakers": len(set(by_speaker) - val)}
    atomic_write(out / "split.json", json.dumps(info, indent=1, ensure_ascii=False))
    return info


def listening_prompts(manifest: str | Path, out: str | Path, count: int, seed: int = 0) -> int:
    """COUNT eval.prompts lines from MANIFEST: for a target utterance, a reference of the same speaker from the same
    manifest, and the target as ground truth. Speakers are taken in turn, so the prompts spread over them."""
    manifest = Path(manifest)
    utts, rejects = read_utterances(manifest)
    if rejects:
        raise ValueError(f"{len(rejects)} bad lines in {manifest}, e.g. {rejects[0]}")
    by_speaker: dict[str, list] = defaultdict(list)
    for u in utts:
        by_speaker[u.speaker].append(u)
    rng = random.Random(seed)
    queues = []
    for s in sorted(by_speaker):
        if len(by_speaker[s]) >= 2:
            group = list(by_speaker[s])
            rng.shuffle(group)
            queues.append(group)
    prompts = []
    while len(prompts) < count and any(len(q) >= 2 for q in queues):
        for q in queues:
            if len(q) >= 2 and len(prompts) < count:
                ref, target = q.pop(), q.pop()
                prompts.append({"id": re.sub(r"[^0-9A-Za-z_-]", "_", f"{target.speaker}-{len(prompts):04d}"),
                                "ref_audio": ref.audio, "ref_text": ref.text, "text": target.text,
                                "target_audio": target.audio, **({"language": target.language}
                                                                 if target.language else {})})
    if not prompts:
        raise ValueError(f"{manifest}: no speaker has two utterances (a reference and a target)")
    _write(Path(out), prompts)
    return len(prompts)
