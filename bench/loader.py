"""Loader throughput per core and padding efficiency.

- ours: planned token-budget batches read by byte offset from tars, token ids stored in the shards, collated by
  the native model's collator (higgs_ds.models.higgs_v2.inputs.NativeCollator; one process = one core);
- naive: one JSON + one .npy file per sample through a map-style Dataset, tokenized with prepare_chatml_sample at
  every read, same collator, same batches;
- collation: ours against boson_multimodal's HiggsAudioSampleCollator on the same samples (measured in the oracle
  venv, bench/oracle.py; the two make the same model inputs, tests/models/higgs_v2/test_inputs.py);
- on the fly: what trainers that tokenize audio every epoch pay on top: the Higgs audio tokenizer per sample.
Hand-over: the training process's CPU time to receive a batch from a loader worker, packed (one flat tensor per
dtype) against each field in its own shared-memory segment.
Padding efficiency: token-budget plan vs random batches on a realistic length distribution (speech of 1-20 s).

Run: .venv/bin/python -m bench.loader
"""

from __future__ import annotations

import io
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import WORK, fixtures, replicated_chatml, speech, table


def build_set(fx: Path, sp: Path) -> Path:
    from higgs_ds.data.shards import BuildConfig, build_shards

    out = WORK / "loader-shards"
    if not (out / "index.json").is_file():
        build_shards(BuildConfig(input=str(replicated_chatml(sp)), out=str(out),
                                 audio_tokenizer=str(fx / "audio_tokenizer"),
                                 text_tokenizer=str(fx / "tokenizer"), shard_size=100,
                                 cache_dir=str(WORK / "code-cache")))
    return out


def realistic_rows(n: int = 20000, seed: int = 0) -> dict:
    """Index rows for speech of 1-20 s (log-normal around 6 s), one reference + one target clip."""
    rng = np.random.default_rng(seed)
    target = np.clip(rng.lognormal(np.log(6), 0.6, n), 1, 20)
    ref = np.clip(rng.lognormal(np.log(6), 0.6, n), 1, 20)
    return {"record": np.arange(n), "shard": np.arange(n) // 1000, "offset": np.arange(n) % 1000 * 4096,
            "text_tokens": (40 + 3.5 * (target + ref)).astype(np.int32),
            "audio_frames": (25 * (target + ref)).astype(np.int32), "n_audio": np.full(n, 2, np.int16),
            "speaker": rng.integers(0, 200, n), "target_frames": (25 * target).astype(np.int32)}


def naive_dataset(index, tok, work: Path):
    """The baseline loader: one JSON + one .npy file per sample, tokenized by prepare_chatml_sample at every read."""
    import torch
    from boson_multimodal.dataset.chatml_dataset import prepare_chatml_sample

    from higgs_ds.data.collate import Sample
    from higgs_ds.data.sample_format import encode_npy

    for i in range(len(index)):
        meta, codes = index.read(i)
        (work / f"{i}.json").write_text(json.dumps({k: meta[k] for k in ("messages", "start_index", "audio")}))
        (work / f"{i}.npy").write_bytes(encode_npy(codes))

    class NaiveDataset(torch.utils.data.Dataset):
        def __len__(self):
            return len(index)

        def __getitem__(self, i):
            meta = json.loads((work / f"{i}.json").read_text())
            codes = np.load(work / f"{i}.npy", allow_pickle=False)
            ids, labels, _, _ = prepare_chatml_sample({"messages": meta["messages"],
                                                       "start_index": meta["start_index"]}, tok)
            frames = [a["frames"] for a in meta["audio"]]
            return Sample(np.asarray(ids, np.int64), np.asarray(labels, np.int64), codes.astype(np.int64),
                          np.asarray(frames, np.int64))

    return NaiveDataset()


def loader_timings(index, tok, collator, batches) -> dict[str, float]:
    """Seconds to read and collate every batch: ours, ours re-tokenizing at every read, and the naive loader."""
    from higgs_ds.data.loader import BatchReader

    reader = BatchReader(index, tok, collator)
    retokenizing = BatchReader(index, tok, collator)
    retokenizing.tokenizer_fp = None  # before: token ids made by prepare_chatml_sample at every read
    ds = naive_dataset(index, tok, Path(tempfile.mkdtemp(dir=WORK)))

    def naive():
        for b in batches:
            collator([ds[int(i)] for i in b])

    return {"ours": min(timed_once(lambda: [reader.collate(b) for b in batches]) for _ in range(3)),
            "naive": min(timed_once(naive) for _ in range(3)),
            "retokenizing": min(timed_once(lambda: [retokenizing.collate(b) for b in batches]) for _ in range(3))}


def collator_timings(reader, collator, batches) -> tuple[float, float | None, int]:
    """(ours, boson's: None without the oracle venv) seconds to collate the same samples."""
    import pickle

    from bench.oracle import oracle

    samples = [reader.samples(b) for b in batches]
    ours = min(timed_once(lambda: [collator(s) for s in samples]) for _ in range(3))
    path = WORK / "collate-samples.pkl"
    path.write_bytes(pickle.dumps((collator.settings, samples)))
    theirs = oracle("collate", path)
    return ours, theirs and theirs["seconds"], len(samples)


def parse_timings(index) -> tuple[float, float, int]:
    """(direct ustar/npy parse, tarfile + np.load) seconds over the samples of the first shard."""
    from higgs_ds.data.sample_format import decode_sample, span_members, span_members_tarfile

    spans = []
    with open(index.shard_path(0), "rb") as f:
        for i in range(int((index.rows["shard"] == 0).sum())):
            f.seek(int(index.rows["offset"][i]))
            spans.append(f.read(int(index.rows["size"][i])))

    def read_direct():
        for data in spans:
            decode_sample(span_members(data, "x"), "x")

    def read_tarfile():  # before: tarfile per sample span and np.load for the codes
        for data in spans:
            m = span_members_tarfile(data, "x")
            json.loads(m["json"]), np.load(io.BytesIO(m["codes.npy"]), allow_pickle=False)

    return min(timed_once(read_direct) for _ in range(5)), min(timed_once(read_tarfile) for _ in range(5)), len(spans)


def encode_seconds_per_clip(fx: Path, sp: Path) -> float:
    from higgs_ds.data.codec import AudioEncoder

    enc = AudioEncoder(str(fx / "audio_tokenizer"), cache_dir=None, device="cpu")
    wavs = sorted((sp / "wavs").glob("*.wav"))[:4]
    enc.encode_file(wavs[0])  # warm-up
    t0 = time.perf_counter()
    for w in wavs:
        enc.encode_file(w)
    return (time.perf_counter() - t0) / len(wavs)


def handover_timings(reader, batches, rounds: int = 3) -> dict[bool, float]:
    """CPU seconds of this process per batch received from one loader worker, per field (False) or packed (True),
    the best of ROUNDS alternating passes over BATCHES (the first batch, the worker's start, not counted)."""
    import torch

    from higgs_ds.data.loader import _PlannedBatches

    best = {False: float("inf"), True: float("inf")}
    for _ in range(rounds):
        for packed in (False, True):
            it = iter(torch.utils.data.DataLoader(_PlannedBatches(reader, batches, packed=packed), batch_size=None,
                                                  num_workers=1, prefetch_factor=4))
            next(it)
            t0 = time.process_time()
            for batch, _ in it:
                if packed:
                    batch.unpack()
            best[packed] = min(best[packed], (time.process_time() - t0) / (len(batches) - 1))
            del it
    return best


def padding_rows() -> list[tuple[str, str, str]]:
    from higgs_ds.data.plan import PlanSettings, plan_epoch, random_batches_efficiency, sample_costs

    real = realistic_rows()
    costs = sample_costs(real)
    rows = []
    for budget in (4096, 8192, 16384):
        p = plan_epoch(real, 0, 0, PlanSettings(world=8, token_budget=budget, max_batch_size=64))
        mean_batch = np.mean([len(b) for r in p.batches for b in r])
        rand = random_batches_efficiency(costs, max(1, int(round(mean_batch))))
        rows.append((f"padding efficiency, budget {budget}", f"{p.padding_efficiency:.3f}",
                     f"vs {rand:.3f} random batches of {mean_batch:.1f}; dropped {p.dropped / p.selected:.2%} "
                     f"(20k samples of 1-20 s, 8 ranks)"))
    return rows


def main() -> list[tuple[str, str, str]]:
    import torch

    from higgs_ds.checkpoints.model import load_tokenizer
    from higgs_ds.config import DataConfig, ModelConfig
    from higgs_ds.data.loader import BatchReader
    from higgs_ds.models import backend_for
    from higgs_ds.data.plan import PlanSettings, plan_epoch
    from higgs_ds.data.shard_index import ShardIndex

    torch.set_num_threads(1)
    fx, sp = fixtures(), speech()
    index = ShardIndex.load(build_set(fx, sp))
    mcfg = ModelConfig(path=str(fx / "model"), tokenizer=str(fx / "tokenizer"))
    backend = backend_for("native")
    tok, collator = load_tokenizer(mcfg), backend.make_collator(backend.load(mcfg).config, mcfg, DataConfig())
    batches = plan_epoch(index.rows, 0, 0, PlanSettings(world=1, token_budget=3000, max_batch_size=16)).batches[0]
    n = sum(len(b) for b in batches)
    t = loader_timings(index, tok, collator, batches)
    t_fast, t_boson, n_batches = collator_timings(BatchReader(index, tok, collator), collator, batches)
    t_direct, t_tarfile, n_spans = parse_timings(index)
    handover = handover_timings(BatchReader(index, tok, collator), batches)
    on_the_fly = 2 * encode_seconds_per_clip(fx, sp) + t["naive"] / n  # reference + target clip, then the same work
    return [("loader, ours", f"{n / t['ours']:.0f}", f"samples/s per core ({n} samples, {len(batches)} token-budget "
             f"batches)"),
            ("loader, naive per-file", f"{n / t['naive']:.0f}", f"samples/s per core; ours is "
             f"{t['naive'] / t['ours']:.1f}x"),
            ("change: whole-batch collator", f"{t_boson / t_fast:.1f}x" if t_boson else "-",
             f"collation speed-up vs HiggsAudioSampleCollator ({t_fast / n * 1e6:.0f} vs "
             f"{t_boson / n * 1e6:.0f} us/sample, {n_batches} batches; the same model inputs)" if t_boson else
             "no oracle venv (make boson-venv)"),
            ("change: stored token ids", f"{t['retokenizing'] / t['ours']:.2f}x", f"loader speed-up vs tokenizing at "
             f"every read ({n / t['retokenizing']:.0f} samples/s)"),
            ("change: direct tar/npy parse", f"{t_tarfile / t_direct:.2f}x", f"sample read speed-up vs tarfile + "
             f"np.load ({t_direct / n_spans * 1e6:.0f} vs {t_tarfile / n_spans * 1e6:.0f} us/sample)"),
            ("change: batches handed over packed", f"{handover[False] / handover[True]:.1f}x", f"the training "
             f"process's CPU to receive a batch from a worker: {handover[True] * 1e3:.2f} vs "
             f"{handover[False] * 1e3:.2f} ms with a shared-memory segment per field"),
            ("loader, on-the-fly audio", f"{1 / on_the_fly:.2f}", f"samples/s per core; ours is "
             f"{on_the_fly * n / t['ours']:.0f}x")] + padding_rows()


def timed_once(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


if __name__ == "__main__":
    WORK.mkdir(parents=True, exist_ok=True)
    table("loader", main())
