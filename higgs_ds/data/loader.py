"""Shards -> Samples -> model batches (collate.py), following the epoch plan (plan.py) so every
rank runs the same number of micro-batches, resumable at any batch, skipping corrupt samples under a budget."""

from __future__ import annotations

import logging
import math
import os
import signal
import threading
import traceback
from queue import Empty, Full, Queue
from dataclasses import dataclass, field

import numpy as np
import torch

from higgs_ds.data.chatml import text_tokenizer_fingerprint
from higgs_ds.data.collate import IGNORE, Sample
from higgs_ds.data.plan import PlanSettings, epoch_plan, same_batches
from higgs_ds.data.prompt_formats import CHATML, prompt_format, record_tokens
from higgs_ds.data.sample_format import ShardError
from higgs_ds.data.shard_index import ShardIndex
from higgs_ds.files import open_binary

log = logging.getLogger(__name__)


@dataclass
class DataPosition:
    epoch: int = 0
    batch: int = 0  # micro-batches this rank has consumed in `epoch` (since its last hop)
    # (world, accum, micro-batches a rank read) of each earlier stretch of this epoch on other ranks (plan.epoch_plan)
    hops: list = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"epoch": self.epoch, "batch": self.batch, "hops": [list(h) for h in self.hops]}


def resumed_position(saved: DataPosition, saved_plan: dict, plan_key: dict) -> DataPosition:
    """Where a resumed run reads on: the saved position under the same plan; the rest of the epoch dealt anew when
    only the world size or accumulation changed mid-epoch; the start of the next epoch when the batches changed."""
    if saved_plan == plan_key:
        return saved
    if same_batches(saved_plan, plan_key):
        if not saved.batch:
            return saved
        log.info(f"resumed on {plan_key['world']} ranks x {plan_key['accum']} accumulation steps a checkpoint "
                 f"written on {saved_plan['world']} x {saved_plan['accum']}: the rest of epoch {saved.epoch} is dealt "
                 f"to the new ranks (no sample read twice; fewer than {plan_key['world']} x {plan_key['accum']} "
                 f"micro-batches left out to keep them equal)")
        return DataPosition(saved.epoch, 0, [*saved.hops, [saved_plan["world"], saved_plan["accum"], saved.batch]])
    position = DataPosition(saved.epoch + (1 if saved.batch else 0), 0)
    log.info(f"data plan changed since the checkpoint ({saved_plan} -> {plan_key}): data re-planned from the start "
             f"of epoch {position.epoch}")
    return position


def to_sample(meta: dict, codes: np.ndarray, tokenizer, tokenizer_fp: str | None = None,
              prompt: str = CHATML) -> Sample:
    """A shard sample as a collator Sample. Token ids come from the shard when it was built with the same text
    tokenizer (fingerprint), else they are made now in the prompt format PROMPT (prompt_formats.py)."""
    stored = meta.get("tokens")
    if stored is not None and tokenizer_fp is not None and stored["tokenizer"] == tokenizer_fp:
        input_tokens, label_tokens = stored["input"], stored["label"]
    else:
        record = {"messages": meta["messages"], "start_index": meta["start_index"], "speaker": meta.get("speaker")}
        input_tokens, label_tokens = record_tokens(prompt, record, len(meta["audio"]), tokenizer)
    input_ids = np.array(input_tokens, dtype=np.int64)
    label_ids = np.array(label_tokens, dtype=np.int64)
    frames = np.array([a["frames"] for a in meta["audio"]], dtype=np.int64)
    if input_ids.shape != label_ids.shape:
        raise ValueError(f"{len(input_ids)} token ids but {len(label_ids)} labels")
    return Sample(input_ids, label_ids, codes, frames)


class ShardMix:
    """Several shard sets read as one index: rows concatenated (shard and speaker ids offset) with a `source`
    column the plan weighs by."""

    def __init__(self, indexes: list[ShardIndex]):
        self.parts = indexes
        self.root = ",".join(ix.root for ix in indexes)
        self.row_start = np.cumsum([0] + [len(ix) for ix in indexes])
        self.shard_start = np.cumsum([0] + [len(ix.meta["shards"]) for ix in indexes])
        speaker_start = np.cumsum([0] + [len(ix.meta["speakers"]) for ix in indexes])
        rows = {}
        for k in indexes[0].rows:
            cols = []
            for s, ix in enumerate(indexes):
                col = ix.rows[k]
                if k == "shard":
                    col = col + self.shard_start[s]
                elif k == "speaker":
                    col = np.where(col >= 0, col + speaker_start[s], -1)
                cols.append(col)
            rows[k] = np.concatenate(cols)
        rows["source"] = np.concatenate([np.full(len(ix), s) for s, ix in enumerate(indexes)])
        self.rows = rows

    def __len__(self) -> int:
        return int(self.row_start[-1])

    def _part(self, i: int) -> tuple[ShardIndex, int]:
        s = int(np.searchsorted(self.row_start, i, side="right") - 1)
        return self.parts[s], i - int(self.row_start[s])

    def shard_path(self, j: int) -> str:
        s = int(np.searchsorted(self.shard_start, j, side="right") - 1)
        return self.parts[s].shard_path(j - int(self.shard_start[s]))

    def where(self, i: int) -> str:
        part, local = self._part(i)
        return part.where(local)

    def read(self, i: int, f=None):
        part, local = self._part(i)
        return part.read(local, f)


def load_train_index(spec: str):
    """A shard set, or several separated by commas (mixed by data.train_weights)."""
    paths = [p.strip() for p in spec.split(",") if p.strip()]
    indexes = [ShardIndex.load(p) for p in paths]
    return indexes[0] if len(indexes) == 1 else ShardMix(indexes)


class BatchReader:
    """Reads and collates micro-batches given as index rows; keeps shard files open per process. A sample that does
    not read or decode is skipped and logged with its shard and key. With `max_bad`, past that many in this process
    the reader stops; the training reader has none, as the train loop bounds the run's total over all ranks."""

    def __init__(self, index: ShardIndex, tokenizer, collator, max_bad: int | None = None):
        for part in index.parts if isinstance(index, ShardMix) else [index]:
            part.check_files()
        self.index, self.tokenizer, self.collator = index, tokenizer, collator
        self.max_bad, self.bad = max_bad, 0
        self.tokenizer_fp = text_tokenizer_fingerprint(tokenizer)
        self.prompt = prompt_format(tokenizer)
        first = index.parts[0] if isinstance(index, ShardMix) else index
        self.frame_rate = float(first.meta["settings"]["frame_rate"])  # audio frames per second in these shards
        self.max_open_files = 32
        self._files: dict[int, object] = {}
        self._pid = os.getpid()

    def __getstate__(self):  # DataLoader workers open their own files
        state = self.__dict__.copy()
        state["_files"] = {}
        return state

    def _file(self, shard: int):
        if self._pid != os.getpid():  # a forked loader worker: the parent's files share its seek offsets
            self._files, self._pid = {}, os.getpid()
        f = self._files.pop(shard, None)
        if f is None:
            f = open_binary(self.index.shard_path(shard))
            if len(self._files) >= self.max_open_files:  # thousands of shards would exhaust file descriptors
                self._files.pop(next(iter(self._files))).close()
        self._files[shard] = f  # most recently used last
        return f

    def sample(self, i: int):
        meta, codes = self.index.read(int(i), self._file(int(self.index.rows["shard"][i])))
        return to_sample(meta, codes, self.tokenizer, self.tokenizer_fp, self.prompt)

    def samples(self, rows: np.ndarray) -> list:
        out = []
        for i in rows:
            try:
                out.append(self.sample(i))
            except (ShardError, ValueError, KeyError, OSError) as e:
                self.bad += 1
                msg = f"skipped corrupt sample {self.index.where(int(i))}: {e} ({self.bad} skipped in this reader)"
                log.warning(msg)
                if self.max_bad is not None and self.bad > self.max_bad:
                    raise ShardError(f"{self.bad} corrupt samples (data.max_skipped_samples={self.max_bad}); last: "
                                     f"{self.index.where(int(i))}: {e}; run `higgs-ds shards verify`") from None
        return out

    def collate(self, rows: np.ndarray):
        return self.load(rows)[0]

    def load(self, rows: np.ndarray) -> tuple[object, int]:
        """(the collated micro-batch, how many of its samples were skipped as unreadable)."""
        samples = self.samples(rows)
        skipped = len(rows) - len(samples)
        if not samples:  # every sample of this micro-batch was corrupt: keep the ranks in step with one that trains
            samples = [self._untrained(rows)]  # nothing (all labels masked)
        return self.collator(samples), skipped

    def _untrained(self, rows: np.ndarray):
        for i in range(len(self.index)):
            try:
                s = self.sample(i)
            except (ShardError, ValueError, KeyError, OSError):
                continue
            s.label_ids = np.full_like(s.label_ids, IGNORE)
            return s
        raise ShardError(f"no readable sample in {self.index.root}")


@dataclass
class PackedBatch:
    """A collated batch as one flat tensor per dtype and where each field lies in it. A loader worker hands a batch
    to the trainer through shared memory, one segment (a file, a descriptor, an mmap on each side) per tensor:
    packed, a batch of a dozen fields costs one, and receiving it a fraction of a millisecond."""

    kind: type
    flat: dict[torch.dtype, torch.Tensor]
    fields: dict[str, tuple[torch.dtype, int, tuple[int, ...]]]  # tensor field -> (dtype, offset, shape)
    other: dict[str, object]  # fields that are not tensors (None)

    @classmethod
    def pack(cls, batch) -> "PackedBatch":
        tensors = {f: v for f, v in vars(batch).items() if isinstance(v, torch.Tensor)}
        fields, parts = {}, {}
        for name, t in tensors.items():
            at = sum(p.numel() for p in parts.get(t.dtype, []))
            fields[name] = (t.dtype, at, tuple(t.shape))
            parts.setdefault(t.dtype, []).append(t.reshape(-1))
        flat = {dtype: torch.cat(ts) for dtype, ts in parts.items()}
        return cls(type(batch), flat, fields, {f: v for f, v in vars(batch).items() if f not in tensors})

    def unpack(self):
        """The batch, its tensors views of the flat ones (nothing copied)."""
        views = {name: self.flat[dtype][at:at + math.prod(shape)].view(shape)
                 for name, (dtype, at, shape) in self.fields.items()}
        return self.kind(**views, **self.other)


class _PlannedBatches(torch.utils.data.Dataset):
    def __init__(self, reader: BatchReader, batches: list[np.ndarray], packed: bool = False):
        self.reader, self.batches, self.packed = reader, batches, packed

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, k: int):
        batch, skipped = self.reader.load(self.batches[k])
        return (PackedBatch.pack(batch) if self.packed else batch), skipped


def stream_batches(reader: BatchReader, seed: int, rank: int, settings: PlanSettings, start: DataPosition,
                   num_workers: int = 0, lookahead: int = 8, prefetch: int = 2):
    """Yield (DataPosition after this batch, collated batch, samples of it skipped as unreadable) forever, epoch
    after epoch, from `start`. With workers, a thread takes batches from them ahead of the training loop (receiving
    a batch costs milliseconds), and the next epoch's workers start `lookahead` batches before this epoch ends (no
    stall between epochs)."""
    if not num_workers:
        epoch, skip, hops = start.epoch, start.batch, start.hops
        while True:
            for k, (batch, skipped) in enumerate(epoch_loader(reader, seed, rank, settings, epoch, skip, 0,
                                                              hops)[1]):
                yield DataPosition(epoch, skip + k + 1, hops), batch, skipped
            epoch, skip, hops = epoch + 1, 0, []
    yield from _from_workers(reader, seed, rank, settings, start, num_workers, lookahead, prefetch)


def _from_workers(reader: BatchReader, seed: int, rank: int, settings: PlanSettings, start: DataPosition,
                  num_workers: int, lookahead: int, prefetch: int):
    """stream_batches with loader workers, received by a prefetch thread."""
    # Every loader, and so every worker fork, is made here on the training thread. A fork from the prefetch thread
    # would copy whatever lock the training thread holds at that instant into the worker (the RNG's, while it draws
    # dropout masks), and the worker would deadlock seeding itself.
    loaders: Queue = Queue()  # (epoch, first batch, batches, iterator), in epoch order
    out: Queue = Queue(maxsize=prefetch)  # ((position, batch, skipped) | NEXT_EPOCH, error)
    stop = threading.Event()

    def put(message) -> bool:
        while not stop.is_set():
            try:
                out.put(message, timeout=0.1)
                return True
            except Full:
                pass
        return False

    def produce() -> None:
        try:
            while not stop.is_set():
                try:
                    epoch, skip, hops, count, batches = loaders.get(timeout=0.1)
                except Empty:
                    continue
                asked = False
                for k, (packed, skipped) in enumerate(batches):
                    if not asked and k >= count - lookahead:
                        asked = put((NEXT_EPOCH, None))
                    if not put(((DataPosition(epoch, skip + k + 1, hops), packed.unpack(), skipped), None)):
                        return
                if not asked and not put((NEXT_EPOCH, None)):
                    return
        except BaseException as e:  # handed to the training loop, which raises it
            # ...without the loader's iterator: the traceback's frames hold it (and so its workers, which block
            # SIGTERM) alive, and an uncaught error would leave the process waiting for them at exit
            traceback.clear_frames(e.__traceback__)
            batches = None  # noqa: F841
            out.put((None, e))

    epoch = start.epoch
    loaders.put((epoch, start.batch, start.hops,
                 *epoch_loader(reader, seed, rank, settings, epoch, start.batch, num_workers, start.hops)))
    thread = threading.Thread(target=produce, name="higgs-ds-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item, error = out.get()
            if error is not None:
                raise error
            if item is NEXT_EPOCH:
                epoch += 1
                loaders.put((epoch, 0, [], *epoch_loader(reader, seed, rank, settings, epoch, 0, num_workers)))
                continue
            yield item
    finally:
        stop.set()
        thread.join(timeout=30)
        while not loaders.empty():  # unread loaders: dropping them shuts their workers down
            loaders.get_nowait()


NEXT_EPOCH = object()  # the prefetch thread asks the training thread for the next epoch's loader


def epoch_loader(reader: BatchReader, seed: int, rank: int, settings: PlanSettings, epoch: int, skip: int,
                 num_workers: int, hops: list = ()):
    """(number of batches, iterator over them) of this rank's plan for EPOCH (after HOPS) from batch SKIP on."""
    plan = epoch_plan(reader.index.rows, seed, epoch, settings, hops)
    if skip == 0:
        log.info(f"epoch {epoch}: {plan.batches_per_rank[rank]} micro-batches per rank, {plan.dropped} of "
                 f"{plan.selected} samples left out to keep ranks equal, padding efficiency "
                 f"{plan.padding_efficiency:.3f}")
    batches = plan.batches[rank][skip:]
    # its own generator: the worker seed is drawn without touching the global RNG training draws from
    loader = torch.utils.data.DataLoader(_PlannedBatches(reader, batches, packed=num_workers > 0), batch_size=None,
                                         shuffle=False, num_workers=num_workers,
                                         prefetch_factor=4 if num_workers else None,
                                         generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
    # SLURM signals every process of a job step; workers inherit this mask, so only the trainer gets them
    blocked = {signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2}
    old = signal.pthread_sigmask(signal.SIG_BLOCK, blocked)
    try:
        return len(batches), iter(loader)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
