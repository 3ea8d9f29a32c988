"""Shards -> ChatMLDatasetSample -> HiggsAudioSampleCollator batches, planned so every rank runs the same number of
micro-batches, and resumable at any batch.

The plan of an epoch depends only on (index, seed, epoch, world size, micro batch, accumulation): every rank computes
it alone. Samples are permuted per epoch; micro-batch k of rank r holds permuted samples [(k*W + r)*B, +B), so one
optimizer step covers the same W*B*A samples whatever the split into ranks (W) and accumulation steps (A). The tail
that does not fill one whole step is dropped for that epoch (another permutation covers it the next epoch) and
reported.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch

from higgs_ds.shards import ShardIndex


@dataclass
class DataPosition:
    epoch: int = 0
    batch: int = 0  # micro-batches this rank has consumed in `epoch`

    def to_dict(self) -> dict:
        return {"epoch": self.epoch, "batch": self.batch}


@dataclass
class EpochPlan:
    batches: list[np.ndarray]  # this rank's micro-batches: index rows
    dropped: int  # samples of the epoch no rank sees


def plan_epoch(n: int, seed: int, epoch: int, rank: int, world: int, micro: int, accum: int) -> EpochPlan:
    per_step = world * micro * accum
    if n < per_step:
        raise ValueError(f"the training set has {n} samples; one optimizer step needs {per_step} "
                         f"(world {world} x micro batch {micro} x accumulation {accum})")
    perm = np.random.default_rng([seed, epoch]).permutation(n)
    usable = n // per_step * per_step
    per_rank = usable // (world * micro)
    batches = [perm[(k * world + rank) * micro:(k * world + rank + 1) * micro] for k in range(per_rank)]
    return EpochPlan(batches, n - usable)


def plan_eval(n: int, rank: int, world: int, micro: int) -> list[tuple[np.ndarray, bool]]:
    """Every validation sample exactly once across ranks; ranks with fewer batches repeat one with weight off, so
    every rank runs the same number of forward passes."""
    mine = np.arange(rank, n, world)
    count = -(-(-(-n // world)) // micro)  # ceil(ceil(n / world) / micro)
    out = [(mine[k * micro:(k + 1) * micro], True) for k in range(count) if len(mine[k * micro:(k + 1) * micro])]
    while len(out) < count:
        out.append((np.arange(min(micro, n)), False))
    return out


def to_dataset_sample(meta: dict, codes: np.ndarray, tokenizer):
    """A shard sample as boson_multimodal's ChatMLDatasetSample (labels from its own prepare_chatml_sample)."""
    from boson_multimodal.dataset.chatml_dataset import ChatMLDatasetSample, prepare_chatml_sample

    record = {"messages": meta["messages"], "start_index": meta["start_index"], "speaker": meta.get("speaker")}
    input_tokens, label_tokens, audio_contents, _ = prepare_chatml_sample(record, tokenizer)
    if input_tokens is None or len(audio_contents) != len(meta["audio"]):
        raise ValueError(f"sample {meta.get('key')}: prepare_chatml_sample could not tokenize it")
    frames = [a["frames"] for a in meta["audio"]]
    starts = np.concatenate([[0], np.cumsum(frames)[:-1]]) if frames else np.zeros(0)
    return ChatMLDatasetSample(
        input_ids=torch.tensor(input_tokens, dtype=torch.long), label_ids=torch.tensor(label_tokens, dtype=torch.long),
        audio_ids_concat=torch.from_numpy(codes.astype(np.int64)), audio_ids_start=torch.tensor(starts, dtype=torch.long),
        audio_waveforms_concat=torch.zeros(0), audio_waveforms_start=torch.zeros(0, dtype=torch.long),
        audio_sample_rate=torch.zeros(0), audio_speaker_indices=torch.zeros(0, dtype=torch.long))


class BatchReader:
    """Reads and collates micro-batches given as index rows; keeps shard files open per process."""

    def __init__(self, index: ShardIndex, tokenizer, collator):
        self.index, self.tokenizer, self.collator = index, tokenizer, collator
        self._files: dict[int, object] = {}

    def __getstate__(self):  # DataLoader workers open their own files
        state = self.__dict__.copy()
        state["_files"] = {}
        return state

    def _file(self, shard: int):
        f = self._files.get(shard)
        if f is None:
            f = self._files[shard] = open(self.index.shard_path(shard), "rb")
        return f

    def samples(self, rows: np.ndarray) -> list:
        out = []
        for i in rows:
            meta, codes = self.index.read(int(i), self._file(int(self.index.rows["shard"][i])))
            out.append(to_dataset_sample(meta, codes, self.tokenizer))
        return out

    def collate(self, rows: np.ndarray):
        # the collator masks labels in place: hand it fresh samples every time
        return self.collator([copy.copy(s) for s in self.samples(rows)])


class _PlannedBatches(torch.utils.data.Dataset):
    def __init__(self, reader: BatchReader, batches: list[np.ndarray]):
        self.reader, self.batches = reader, batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, k: int):
        return self.reader.collate(self.batches[k])


def stream_batches(reader: BatchReader, seed: int, rank: int, world: int, micro: int, accum: int,
                   start: DataPosition, num_workers: int = 0, log=None):
    """Yield (DataPosition after this batch, collated batch) forever, epoch after epoch, from `start`."""
    epoch, skip = start.epoch, start.batch
    n = len(reader.index)
    while True:
        plan = plan_epoch(n, seed, epoch, rank, world, micro, accum)
        if log and skip == 0:
            log(f"epoch {epoch}: {len(plan.batches)} micro-batches per rank, {plan.dropped} of {n} samples left "
                f"for later epochs (do not fill a whole step)")
        loader = torch.utils.data.DataLoader(_PlannedBatches(reader, plan.batches[skip:]), batch_size=None,
                                             shuffle=False, num_workers=num_workers,
                                             prefetch_factor=4 if num_workers else None,
                                             persistent_workers=False)
        for k, batch in enumerate(loader, start=skip):
            yield DataPosition(epoch, k + 1), batch
        epoch, skip = epoch + 1, 0
