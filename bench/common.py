"""Helpers shared by the benchmarks: offline fixtures, sample speech, timing, table printing."""

from __future__ import annotations

import os
import time
from pathlib import Path

from higgs_ds.fixtures import FIXTURES_VERSION, ensure_fixtures, offline_env

REPO = Path(__file__).resolve().parents[1]
WORK = REPO / ".cache" / "bench" / f"fixtures-v{FIXTURES_VERSION}"  # shards and runs made from these fixtures
FIXTURES = REPO / ".cache" / "test-fixtures"
os.environ.update({**offline_env(FIXTURES), "TOKENIZERS_PARALLELISM": "false"})


def bf16_matrix_units() -> bool:
    """Whether the CPU multiplies bf16 matrices natively (AVX-512 BF16 or AMX); without, torch emulates bf16 and the
    tiny model's bf16 steps cost several times their fp32 time."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


# the training benchmarks' precision: bf16 as on a GPU where the CPU has the units, else fp32 (the step times then
# measure fp32 work; the ratios against the bare loop keep their meaning)
PRECISION = os.environ.get("HIGGS_DS_BENCH_PRECISION") or ("bf16" if bf16_matrix_units() else "fp32")


def fixtures() -> Path:
    return ensure_fixtures(FIXTURES)


def speech(speakers: int = 3, utterances: int = 6) -> Path:
    from higgs_ds.data.sample_data import make_sample_data

    out = WORK / f"speech-{speakers}x{utterances}"
    if not (out / "utterances.jsonl").is_file():
        make_sample_data(out, speakers, utterances)
    return out


def replicated_chatml(sp: Path, copies: int = 20) -> Path:
    """The sample-data ChatML manifest repeated `copies` times (absolute audio paths): many records over few files,
    so per-sample costs dominate start-up."""
    manifest = WORK / f"chatml-x{copies}.jsonl"
    manifest.write_text("".join(line.replace('"wavs/', f'"{sp}/wavs/') for line in
                                (sp / "chatml.jsonl").read_text().splitlines(keepends=True)) * copies)
    return manifest


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
