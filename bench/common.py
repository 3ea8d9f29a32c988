"""Helpers shared by the benchmarks: offline fixtures, sample speech, timing, table printing."""

from __future__ import annotations

import os
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WORK = REPO / ".cache" / "bench"
FIXTURES = REPO / ".cache" / "test-fixtures"
os.environ.update({"HF_HOME": str(FIXTURES / "hf_home"), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                   "TOKENIZERS_PARALLELISM": "false"})


def fixtures() -> Path:
    import json

    from higgs_ds.fixtures import FIXTURES_VERSION, build_fixtures

    stamp = FIXTURES / "FIXTURES.json"
    if not stamp.is_file() or json.loads(stamp.read_text()).get("version") != FIXTURES_VERSION:
        build_fixtures(FIXTURES)
    return FIXTURES


def speech(speakers: int = 3, utterances: int = 6) -> Path:
    from higgs_ds.sample_data import make_sample_data

    out = WORK / f"speech-{speakers}x{utterances}"
    if not (out / "utterances.jsonl").is_file():
        make_sample_data(out, speakers, utterances)
    return out


def timed(fn, repeat: int = 3) -> float:
    """Best wall time of `repeat` calls (noisy shared machines: the minimum is the stable figure)."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def table(title: str, rows: list[tuple[str, str, str]]) -> None:
    print(f"\n== {title}")
    w = max(len(r[0]) for r in rows)
    for name, value, note in rows:
        print(f"  {name:<{w}}  {value:>14}  {note}")
