"""The loader over real shards: multi-worker batches and exact resume, corrupt samples, fsspec URLs, mixed sets,
open-file bounds."""

import dataclasses

import numpy as np
import pytest
import torch

from higgs_ds.data.plan import PlanSettings


@pytest.fixture(scope="module")
def reader(shards, fixtures_dir):
    from transformers import HiggsAudioV2Config

    from higgs_ds.checkpoints.hub import resolve_native_model
    from higgs_ds.checkpoints.model import load_tokenizer
    from higgs_ds.config import DataConfig, ModelConfig
    from higgs_ds.data.loader import BatchReader
    from higgs_ds.data.shard_index import ShardIndex
    from higgs_ds.models.higgs_v2.backend import make_collator

    mcfg = ModelConfig(path=str(fixtures_dir / "model"), tokenizer=str(fixtures_dir / "tokenizer"))
    config = HiggsAudioV2Config.from_pretrained(resolve_native_model(mcfg.path, mcfg.tokenizer).path)
    return BatchReader(ShardIndex.load(shards), load_tokenizer(mcfg), make_collator(config, mcfg, DataConfig()))


def _keys(batch):
    return batch.input_ids[batch.attention_mask.bool()].sum().item(), tuple(batch.audio_input_ids.shape)


@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_multi_worker_loaders_give_equal_batches_and_resume_exactly(reader, world):
    import itertools

    from higgs_ds.data.loader import DataPosition, stream_batches

    s = PlanSettings(world=world, micro=1, accum=1, token_budget=400, max_batch_size=4)
    per_rank = []
    for rank in range(world):
        stream = stream_batches(reader, 0, rank, s, DataPosition(), num_workers=2)
        per_rank.append([(pos.to_dict(), _keys(b)) for pos, b, _ in itertools.islice(stream, 7)])
    epoch0 = [sum(1 for p, _ in r if p["epoch"] == 0) for r in per_rank]
    assert len(set(epoch0)) == 1, epoch0  # the shards are uneven (5, 5, 2): ranks still get equal counts
    # resuming at an arbitrary batch yields exactly what the uninterrupted stream yields next
    for k in (1, 3, epoch0[0]):
        pos = DataPosition(**per_rank[0][k - 1][0])
        resumed = stream_batches(reader, 0, 0, s, pos, num_workers=2)
        assert [(p.to_dict(), _keys(b)) for p, b, _ in itertools.islice(resumed, 7 - k)] == per_rank[0][k:]


def test_batches_from_workers_equal_the_batches_read_in_process(reader):
    """Workers hand each batch over packed, one flat tensor per dtype; unpacked, every field equals the batch read
    on the training thread (dtype, shape and values; None fields stay None)."""
    import itertools

    from higgs_ds.data.loader import DataPosition, PackedBatch, stream_batches

    s = PlanSettings(world=1, micro=2)
    in_process = list(itertools.islice(stream_batches(reader, 0, 0, s, DataPosition(), num_workers=0), 9))
    workers = stream_batches(reader, 0, 0, s, DataPosition(), num_workers=2)
    from_workers = list(itertools.islice(workers, 9))
    workers.close()
    assert [p for p, _, _ in from_workers] == [p for p, _, _ in in_process]
    for (_, a, _), (_, b, _) in zip(in_process, from_workers):
        assert batch_differences(a, b) == []
    batch = in_process[0][1]
    tensors = [v for v in vars(batch).values() if isinstance(v, torch.Tensor)]
    packed = PackedBatch.pack(batch)
    assert len(tensors) == len(packed.fields) == 9 and len(packed.flat) == len({t.dtype for t in tensors}) == 2
    assert batch_differences(packed.unpack(), batch) == []


def test_corrupt_samples_are_skipped_counted_and_bounded(shards, reader, tmp_path, caplog):
    import shutil

    from higgs_ds.data.loader import BatchReader
    from higgs_ds.data.sample_format import ShardError
    from higgs_ds.data.shard_index import ShardIndex

    copy = tmp_path / "copy"
    shutil.copytree(shards, copy)
    idx = ShardIndex.load(copy)
    data = bytearray((copy / "shard-000000.tar").read_bytes())
    for i in (1, 2):  # break samples 1 and 2 (their .codes.npy payload)
        off = int(idx.rows["offset"][i])
        data[off + 512: off + 700] = b"\xff" * 188
    (copy / "shard-000000.tar").write_bytes(bytes(data))
    bad = BatchReader(idx, reader.tokenizer, reader.collator, max_bad=2)
    batch, skipped = bad.load(np.array([0, 1, 3]))
    assert batch.input_ids.shape[0] == 2 and bad.bad == 1 and skipped == 1
    assert "skipped corrupt sample" in caplog.text and "shard-000000.tar sample s000000001" in caplog.text
    only_bad, skipped = bad.load(np.array([2]))  # nothing readable: a stand-in that trains nothing keeps ranks in step
    assert only_bad.text_label_count == only_bad.audio_label_count == 0 and skipped == 1
    with pytest.raises(ShardError, match=r"3 corrupt samples \(data.max_skipped_samples=2\).*shard-000000.tar sample"):
        bad.collate(np.array([1]))


def test_fsspec_urls_read_like_local_paths(shards):
    from higgs_ds.data.shard_index import ShardIndex

    local, remote = ShardIndex.load(shards), ShardIndex.load(f"file://{shards}")
    assert len(remote) == len(local)
    meta_l, codes_l = local.read(7)
    meta_r, codes_r = remote.read(7)
    assert meta_l == meta_r and np.array_equal(codes_l, codes_r)


def test_mixed_index_reads_each_set(shards, reader, fixtures_dir, speech, code_cache, tmp_path):
    from tests.helpers import run_cli
    from higgs_ds.data.loader import load_train_index
    from higgs_ds.data.shard_index import ShardIndex

    other = tmp_path / "chatml"
    run_cli("shards", "build", "--input", speech / "chatml.jsonl", "--out", other, "--audio-tokenizer",
            fixtures_dir / "audio_tokenizer", "--text-tokenizer", fixtures_dir / "tokenizer", "--cache-dir",
            code_cache, "--shard-size", 4)
    mix = load_train_index(f"{shards},{other}")
    a, b = ShardIndex.load(shards), ShardIndex.load(other)
    assert len(mix) == len(a) + len(b) and mix.rows["shard"].max() == 2 + 3
    for i in (0, len(a) - 1, len(a), len(mix) - 1):
        want = a.read(i) if i < len(a) else b.read(i - len(a))
        got = mix.read(i)
        assert got[0] == want[0] and np.array_equal(got[1], want[1])
    assert str(other) in mix.where(len(mix) - 1)


def test_reader_keeps_a_bounded_number_of_shards_open(shards, reader):
    from higgs_ds.data.loader import BatchReader

    r = BatchReader(reader.index, reader.tokenizer, reader.collator)
    r.max_open_files = 2
    for rows in ([0], [6], [11], [1], [7]):  # shards 0, 1, 2, 0, 1
        r.collate(np.array(rows))
        assert len(r._files) <= 2
    assert list(r._files) == [0, 1]  # least recently used (shard 2) was closed


def test_forked_workers_do_not_share_the_parents_open_shards(reader):
    """A reader that has read in the parent (training checks its collator on the first samples) is forked into
    loader workers: each must open its own files, or their seeks on shared descriptors corrupt each other's reads
    (seen as skipped samples and changed batches in training)."""
    import os

    import torch

    from higgs_ds.data.loader import BatchReader, _PlannedBatches

    r = BatchReader(reader.index, reader.tokenizer, reader.collator, max_bad=0)
    want = [_keys(r.collate(np.array([i]))) for i in range(len(r.index))]  # opens every shard in the parent
    fds = [f.fileno() for f in r._files.values()]
    assert len(fds) == 3
    for fd in fds:
        os.lseek(fd, 0, os.SEEK_SET)  # a worker reading through an inherited descriptor would move this offset
    loader = torch.utils.data.DataLoader(_PlannedBatches(r, [np.array([i]) for i in range(len(r.index))] * 20),
                                         batch_size=None, num_workers=2,
                                         multiprocessing_context=torch.multiprocessing.get_context("fork"))
    assert [_keys(b) for b, _ in loader] == want * 20
    assert [os.lseek(fd, 0, os.SEEK_CUR) for fd in fds] == [0, 0, 0]


def test_stored_token_ids_are_used_only_with_the_same_tokenizer(shards, fixtures_dir):
    from transformers import AutoTokenizer

    from higgs_ds.data.chatml import text_tokenizer_fingerprint
    from higgs_ds.data.loader import to_sample
    from higgs_ds.data.shard_index import ShardIndex

    idx = ShardIndex.load(shards)
    tok = AutoTokenizer.from_pretrained(fixtures_dir / "tokenizer")
    fp = text_tokenizer_fingerprint(tok)
    assert idx.read(0)[0]["tokens"]["tokenizer"] == fp
    for i in range(len(idx)):
        meta, codes = idx.read(i)
        stored = to_sample(meta, codes, tok, fp)
        fresh = to_sample(meta, codes, tok, "another-tokenizer")  # falls back to tokenizing now
        assert np.array_equal(stored.input_ids, fresh.input_ids) and np.array_equal(stored.label_ids, fresh.label_ids)


@pytest.mark.parametrize("damage", ["delete", "truncate"])
def test_shards_changed_after_indexing_stop_the_reader_before_it_reads(shards, reader, tmp_path, damage):
    import shutil

    from higgs_ds.data.loader import BatchReader
    from higgs_ds.data.sample_format import ShardError
    from higgs_ds.data.shard_index import ShardIndex

    copy = tmp_path / "copy"
    shutil.copytree(shards, copy)
    target = copy / "shard-000001.tar"
    size = target.stat().st_size
    if damage == "delete":
        target.unlink()
    else:
        target.write_bytes(target.read_bytes()[:4096])
    with pytest.raises(ShardError) as err:
        BatchReader(ShardIndex.load(copy), reader.tokenizer, reader.collator)
    want = "shard-000001.tar is missing" if damage == "delete" else \
        f"shard-000001.tar has 4096 bytes, index.json says {size}"
    assert f"{copy}: 1 of 3 shards do not match index.json ({want})" in str(err.value)


def test_a_shard_swapped_for_another_of_the_same_size_is_named_before_reading(shards, reader, tmp_path):
    """shard-000002.tar overwritten by shard-000000.tar's bytes, cut to its own size: the size check passes, and
    without the first-sample check every one of its samples would be skipped as corrupt."""
    import shutil

    from higgs_ds.data.loader import BatchReader
    from higgs_ds.data.sample_format import ShardSetError
    from higgs_ds.data.shard_index import ShardIndex

    copy = tmp_path / "copy"
    shutil.copytree(shards, copy)
    size = (copy / "shard-000002.tar").stat().st_size
    (copy / "shard-000002.tar").write_bytes((copy / "shard-000000.tar").read_bytes()[:size])
    idx = ShardIndex.load(copy)
    first = int(idx.rows["record"][idx.rows["shard"] == 2].min())
    with pytest.raises(ShardSetError) as err:
        BatchReader(idx, reader.tokenizer, reader.collator)
    assert (f"1 of 3 shards are not the shards index.json was built from (shard-000002.tar has sample s000000000 "
            f"at byte 0, where index.json puts its first sample s{first:09d})") in str(err.value)
    (copy / "shard-000002.tar").write_bytes(bytes(size))  # zeros: no header at all
    with pytest.raises(ShardSetError, match="shard-000002.tar has no tar header at byte 0"):
        BatchReader(ShardIndex.load(copy), reader.tokenizer, reader.collator)


def test_an_index_row_that_reads_another_sample_is_an_error(shards):
    """A shard replaced by one of the same size would hand index rows other samples: the key is checked."""
    from higgs_ds.data.sample_format import ShardError
    from higgs_ds.data.shard_index import ShardIndex

    idx = ShardIndex.load(shards)
    idx.rows["record"] = idx.rows["record"].copy()
    idx.rows["record"][1] = idx.rows["record"][2]
    assert idx.read(2)[0]["key"] == "s000000002"
    with pytest.raises(ShardError, match=r"shard-000000.tar sample s000000002: the bytes at offset \d+ hold sample "
                                         r"s000000001, not s000000002: the shard changed after it was indexed"):
        idx.read(1)


def test_epoch_loaders_start_on_the_training_thread_while_it_draws_random_numbers(reader):
    """The training thread draws random numbers all the time (dropout); workers forked from the prefetch thread
    while it held the RNG's lock deadlocked seeding themselves (2 of 2 runs of this loop hung before). 12 epoch
    boundaries with the RNG busy between batches, the whole loop under a deadline, every loader made on the
    training thread."""
    import threading

    import torch

    from higgs_ds.data import loader
    from higgs_ds.data.loader import DataPosition, stream_batches

    made_on, positions, errors = [], [], []
    original = loader.epoch_loader

    def recording(*args, **kwargs):
        made_on.append(threading.current_thread().name)
        return original(*args, **kwargs)

    def training():
        try:
            for _ in range(36):
                positions.append(next(stream)[0])
                [torch.rand(2_000_000) for _ in range(30)]  # holds the RNG lock
            stream.close()
        except BaseException as e:
            errors.append(e)

    loader.epoch_loader = recording
    try:
        s = PlanSettings(world=1, micro=4, accum=1)
        stream = stream_batches(reader, 0, 0, s, DataPosition(), num_workers=1, lookahead=2)
        # a plain thread stands for the training thread, not an executor's: a process forked from a
        # ThreadPoolExecutor's thread exits with code 1 (at exit it joins the executor's threads, itself included)
        thread = threading.Thread(target=training, name="training", daemon=True)
        thread.start()
        thread.join(timeout=300)
    finally:
        loader.epoch_loader = original
    assert not thread.is_alive(), f"the stream hung after {len(positions)} batches"
    assert not errors, errors
    assert [p.epoch for p in positions] == [e for e in range(12) for _ in range(3)]  # 12 samples: 3 batches of 4
    assert set(made_on) == {"training"} and len(made_on) >= 12
    assert positions[0].batch == 1 and positions[-1].batch == 3


def test_an_error_in_a_worker_leaves_no_worker_behind(reader):
    """An unexpected error in a loader worker reaches the training thread, and the workers go with it even while
    the error is still alive (as it is when it ends the process uncaught: workers block SIGTERM, and the process
    would wait for them at exit forever)."""
    import multiprocessing
    import time

    from higgs_ds.data.loader import BatchReader, DataPosition, stream_batches

    broken = BatchReader(reader.index, reader.tokenizer, reader.collator)

    def load(rows):
        raise RuntimeError("sample code failed")

    broken.load = load  # forked into the worker as it is
    stream = stream_batches(broken, 0, 0, PlanSettings(world=1, micro=1), DataPosition(), num_workers=1)
    with pytest.raises(RuntimeError, match="sample code failed") as err:
        next(stream)
    deadline = time.time() + 20
    while multiprocessing.active_children() and time.time() < deadline:
        time.sleep(0.1)
    assert not multiprocessing.active_children() and err.value is not None


def batch_differences(a, b) -> list[str]:
    """Fields of two batches (dataclasses) that differ (type, dtype, shape or values); [] when identical."""
    diffs = []
    for name in (f.name for f in dataclasses.fields(a)):
        x, y = getattr(a, name), getattr(b, name)
        if x is None or y is None:
            if x is not y:
                diffs.append(f"{name}: {type(x).__name__} vs {type(y).__name__}")
        elif x.dtype != y.dtype or x.shape != y.shape:
            diffs.append(f"{name}: {x.dtype}{tuple(x.shape)} vs {y.dtype}{tuple(y.shape)}")
        elif not torch.equal(x, y):
            diffs.append(f"{name}: values differ")
    return diffs
