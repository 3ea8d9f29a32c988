"""The epoch plan and the loaders: equal batches on every rank, each sample once, exact resume, token budgets."""

import numpy as np
import pytest

from higgs_ds.plan import PlanSettings, plan_epoch, plan_eval, random_batches_efficiency, sample_costs


def uneven_rows(sizes=(37, 3, 120, 9, 64, 1, 80), seed=0):
    """A synthetic index: deliberately uneven shards, speech of 1-20 s, a few dominant speakers."""
    rng = np.random.default_rng(seed)
    n = sum(sizes)
    shard = np.concatenate([np.full(k, j) for j, k in enumerate(sizes)]).astype(np.int32)
    offset = np.concatenate([np.arange(k) * 4096 for k in sizes]).astype(np.int64)
    seconds = rng.uniform(1, 20, n)
    return {"record": np.arange(n), "shard": shard, "offset": offset,
            "text_tokens": (seconds * 4 + 30).astype(np.int32),
            "audio_frames": (2 * seconds * 25).astype(np.int32),  # reference + target
            "n_audio": np.full(n, 2, np.int16), "speaker": rng.choice(12, n, p=np.r_[[0.45], np.full(11, 0.05)]),
            "seconds": seconds.astype(np.float32), "target_frames": (seconds * 25).astype(np.int32),
            "size": np.full(n, 4096)}


@pytest.mark.parametrize("world", [1, 2, 3, 4])
@pytest.mark.parametrize("mode", ["samples", "tokens"])
def test_every_rank_gets_the_same_batch_count_and_every_sample_once(world, mode):
    rows = uneven_rows()
    s = PlanSettings(world=world, micro=3, accum=2, workers=2, token_budget=6000 if mode == "tokens" else 0)
    for epoch in range(3):
        plan = plan_epoch(rows, seed=1, epoch=epoch, s=s)
        counts = plan.batches_per_rank
        assert len(set(counts)) == 1 and counts[0] % 2 == 0 and counts[0] > 0, counts
        seen = np.concatenate([b for rank in plan.batches for b in rank])
        assert len(seen) == len(set(seen.tolist()))  # nobody reads a sample twice
        assert len(seen) + plan.dropped == plan.selected == len(rows["record"])
        if mode == "tokens":
            costs = sample_costs(rows)
            assert all(costs[b].max() * len(b) <= 6000 for rank in plan.batches for b in rank)
            assert plan.dropped < world * 2 * 3 * 6  # fewer than world x accum batches of at most 6 samples
    other = plan_epoch(rows, seed=1, epoch=1, s=s).batches[0][0]
    assert not np.array_equal(plan_epoch(rows, seed=1, epoch=0, s=s).batches[0][0], other)  # reshuffled per epoch


def test_token_budget_beats_random_batching_on_padding():
    rows = uneven_rows(sizes=(2000, 700, 3100, 1500, 2700), seed=3)
    plan = plan_epoch(rows, 0, 0, PlanSettings(world=8, workers=4, token_budget=8000, max_batch_size=64))
    rand = random_batches_efficiency(sample_costs(rows), 8)
    assert plan.padding_efficiency >= 0.95 > rand
    assert plan.dropped / plan.selected < 0.01


def test_samples_mode_is_invariant_to_the_rank_accumulation_split():
    rows = uneven_rows()
    two = plan_epoch(rows, 0, 0, PlanSettings(world=2, micro=2, accum=1))
    one = plan_epoch(rows, 0, 0, PlanSettings(world=1, micro=2, accum=2))
    for k in range(len(two.batches[0])):
        assert sorted(np.r_[two.batches[0][k], two.batches[1][k]]) == sorted(np.r_[one.batches[0][2 * k],
                                                                                  one.batches[0][2 * k + 1]])


def test_speaker_cap_and_temperature():
    rows = uneven_rows()
    capped = plan_epoch(rows, 0, 0, PlanSettings(world=1, micro=1, speaker_cap=10))
    seen = np.concatenate(capped.batches[0])
    assert np.bincount(rows["speaker"][seen]).max() <= 10
    flat = plan_epoch(rows, 0, 0, PlanSettings(world=1, micro=1, speaker_temperature=0.5))
    counts = np.bincount(rows["speaker"][np.concatenate(flat.batches[0])])
    full = np.bincount(rows["speaker"])
    assert counts[0] / counts[1:].mean() < full[0] / full[1:].mean()  # the dominant speaker is flattened
    assert counts.min() == full[full > 0].min()  # the smallest speaker is kept whole


def test_eval_plan_covers_every_sample_once_with_equal_passes():
    for world in (1, 2, 3, 4):
        plans = [plan_eval(11, r, world, 2) for r in range(world)]
        assert len({len(p) for p in plans}) == 1
        seen = np.concatenate([rows for p in plans for rows, w in p if w])
        assert sorted(seen.tolist()) == list(range(11))


# ---- real loaders over real shards


@pytest.fixture(scope="module")
def reader(shards, fixtures_dir):
    from higgs_ds.config import ModelConfig
    from higgs_ds.data import BatchReader
    from higgs_ds.collate import make_collator
    from higgs_ds.model import load_model, load_tokenizer
    from higgs_ds.shard_index import ShardIndex

    mcfg = ModelConfig(path=str(fixtures_dir / "model"), tokenizer=str(fixtures_dir / "tokenizer"))
    return BatchReader(ShardIndex.load(shards), load_tokenizer(mcfg), make_collator(load_model(mcfg).config))


def _keys(batch):
    return batch.input_ids[batch.attention_mask.bool()].sum().item(), tuple(batch.audio_out_ids.shape)


@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_multi_worker_loaders_give_equal_batches_and_resume_exactly(reader, world):
    import itertools

    from higgs_ds.data import DataPosition, stream_batches

    s = PlanSettings(world=world, micro=1, accum=1, workers=2, token_budget=400, max_batch_size=4)
    per_rank = []
    for rank in range(world):
        stream = stream_batches(reader, 0, rank, s, DataPosition(), num_workers=2)
        per_rank.append([(pos.to_dict(), _keys(b)) for pos, b in itertools.islice(stream, 7)])
    epoch0 = [sum(1 for p, _ in r if p["epoch"] == 0) for r in per_rank]
    assert len(set(epoch0)) == 1, epoch0  # the shards are uneven (5, 5, 2): ranks still get equal counts
    # resuming at an arbitrary batch yields exactly what the uninterrupted stream yields next
    for k in (1, 3, epoch0[0]):
        pos = DataPosition(**per_rank[0][k - 1][0])
        resumed = stream_batches(reader, 0, 0, s, pos, num_workers=2)
        assert [(p.to_dict(), _keys(b)) for p, b in itertools.islice(resumed, 7 - k)] == per_rank[0][k:]


def test_corrupt_samples_are_skipped_counted_and_bounded(shards, reader, tmp_path, capfd):
    import shutil

    from higgs_ds.data import BatchReader
    from higgs_ds.sample_format import ShardError
    from higgs_ds.shard_index import ShardIndex

    copy = tmp_path / "copy"
    shutil.copytree(shards, copy)
    idx = ShardIndex.load(copy)
    data = bytearray((copy / "shard-000000.tar").read_bytes())
    for i in (1, 2):  # break samples 1 and 2 (their .codes.npy payload)
        off = int(idx.rows["offset"][i])
        data[off + 512: off + 700] = b"\xff" * 188
    (copy / "shard-000000.tar").write_bytes(bytes(data))
    bad = BatchReader(idx, reader.tokenizer, reader.collator, max_bad=2)
    batch = bad.collate(np.array([0, 1, 3]))
    assert batch.input_ids.shape[0] == 2 and bad.bad == 1
    assert "skipped corrupt sample" in capfd.readouterr().err
    only_bad = bad.collate(np.array([2]))  # nothing readable: a stand-in that trains nothing keeps ranks in step
    assert (only_bad.label_ids == -100).all() and (only_bad.label_audio_ids == -100).all()
    with pytest.raises(ShardError, match=r"3 corrupt samples \(data.max_bad_samples=2\).*shard-000000.tar sample"):
        bad.collate(np.array([1]))


def test_fsspec_urls_read_like_local_paths(shards):
    from higgs_ds.shard_index import ShardIndex

    local, remote = ShardIndex.load(shards), ShardIndex.load(f"file://{shards}")
    assert len(remote) == len(local)
    meta_l, codes_l = local.read(7)
    meta_r, codes_r = remote.read(7)
    assert meta_l == meta_r and np.array_equal(codes_l, codes_r)


def test_weighted_mixing_of_shard_sets():
    from higgs_ds.plan import mix_sources

    rows = uneven_rows(sizes=(100, 300))
    rows["source"] = np.r_[np.zeros(100, int), np.ones(300, int)]
    plan = plan_epoch(rows, 0, 0, PlanSettings(world=2, micro=2, source_weights=(1.0, 1.0)))
    seen = np.concatenate([b for r in plan.batches for b in r])
    counts = np.bincount(rows["source"][seen], minlength=2)
    assert abs(counts[0] - counts[1]) <= 4 and counts.sum() + plan.dropped == 400  # half each, epoch size kept
    assert np.bincount(seen[rows["source"][seen] == 0]).max() == 2  # the small set is repeated, no sample 3 times
    again = plan_epoch(rows, 0, 0, PlanSettings(world=2, micro=2, source_weights=(1.0, 1.0)))
    assert all(np.array_equal(a, b) for a, b in zip(again.batches[0], plan.batches[0]))
    assert len(mix_sources(np.arange(400), rows["source"], (0.0, 1.0), np.random.default_rng(0))) == 400
    with pytest.raises(ValueError, match="3 source weights for 2 shard set"):
        plan_epoch(rows, 0, 0, PlanSettings(world=1, source_weights=(1.0, 1.0, 1.0)))


def test_mixed_index_reads_each_set(shards, reader, fixtures_dir, speech, code_cache, tmp_path):
    from conftest import run_cli
    from higgs_ds.data import load_train_index
    from higgs_ds.shard_index import ShardIndex

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
    from higgs_ds.data import BatchReader

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

    from higgs_ds.data import BatchReader, _PlannedBatches

    r = BatchReader(reader.index, reader.tokenizer, reader.collator, max_bad=0)
    want = [_keys(r.collate(np.array([i]))) for i in range(len(r.index))]  # opens every shard in the parent
    fds = [f.fileno() for f in r._files.values()]
    assert len(fds) == 3
    for fd in fds:
        os.lseek(fd, 0, os.SEEK_SET)  # a worker reading through an inherited descriptor would move this offset
    loader = torch.utils.data.DataLoader(_PlannedBatches(r, [np.array([i]) for i in range(len(r.index))] * 20),
                                         batch_size=None, num_workers=2,
                                         multiprocessing_context=torch.multiprocessing.get_context("fork"))
    assert [_keys(b) for b in loader] == want * 20
    assert [os.lseek(fd, 0, os.SEEK_CUR) for fd in fds] == [0, 0, 0]
