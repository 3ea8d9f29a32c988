"""The epoch plan: equal batches on every rank, each sample once, the rank/accumulation split, token budgets,
speaker balancing, weighted mixing, the eval plan."""

import numpy as np
import pytest

from higgs_ds.data.plan import PlanSettings, plan_epoch, plan_eval, random_batches_efficiency, sample_costs


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
    s = PlanSettings(world=world, micro=3, accum=2, token_budget=6000 if mode == "tokens" else 0)
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


@pytest.mark.parametrize("budget", [4096, 8192, 16384])
def test_token_budget_beats_random_batching_on_padding(budget):
    """8 ranks: each rank's share of the epoch is sorted and packed as one span (per loader worker, 4 workers,
    padding at a 16k budget was 0.958)."""
    rows = uneven_rows(sizes=(2000, 700, 3100, 1500, 2700), seed=3)
    plan = plan_epoch(rows, 0, 0, PlanSettings(world=8, token_budget=budget, max_batch_size=64))
    rand = random_batches_efficiency(sample_costs(rows), 8)
    assert plan.padding_efficiency >= 0.97 > rand
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



def test_weighted_mixing_of_shard_sets():
    from higgs_ds.data.plan import mix_sources

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


@pytest.mark.parametrize("mode", ["samples", "tokens"])
@pytest.mark.parametrize("hops", [[(2, 1, 5)], [(2, 1, 5), (3, 2, 4)], [(4, 1, 7), (1, 3, 6)]])
def test_an_epoch_resumed_on_other_ranks_reads_the_rest_once(mode, hops):
    """A run that read part of an epoch on some ranks (each hop: world, accumulation, micro-batches a rank read)
    and resumed on others reads every unread micro-batch of the epoch's first plan at most once, in equal counts
    on the new ranks (a multiple of their accumulation), leaving out fewer than world x accum micro-batches."""
    from higgs_ds.data.plan import epoch_plan

    rows = uneven_rows()
    base = PlanSettings(world=3, micro=3, accum=2, token_budget=6000 if mode == "tokens" else 0)
    first = plan_epoch(rows, seed=1, epoch=0, s=PlanSettings(**{**base.__dict__, "world": hops[0][0],
                                                                "accum": hops[0][1]}))
    read = []  # micro-batches read before the last resume, stretch by stretch
    plan = first
    for i, (world, accum, consumed) in enumerate(hops):
        read += [plan.batches[r][k] for k in range(consumed) for r in range(world)]
        plan = epoch_plan(rows, 1, 0, PlanSettings(**{**base.__dict__, "world": (hops + [(3, 2, 0)])[i + 1][0],
                                                      "accum": (hops + [(3, 2, 0)])[i + 1][1]}), hops[:i + 1])
    counts = plan.batches_per_rank
    assert len(counts) == 3 and len(set(counts)) == 1 and counts[0] % 2 == 0
    after = [b for rank in plan.batches for b in rank]
    seen = np.concatenate(read + after)
    assert len(seen) == len(set(seen.tolist()))  # nothing read twice
    planned = {tuple(b) for rank in first.batches for b in rank}
    assert {tuple(b) for b in read + after} <= planned  # the first plan's own micro-batches, none invented
    left_out = len(planned) - len(read) - len(after)
    assert 0 <= left_out < sum(w * a for w, a, _ in hops[1:]) + 3 * 2  # each re-deal leaves out < world x accum
    assert plan.dropped == first.dropped + sum(len(b) for b in planned) - len(seen)


def test_a_resume_on_fewer_ranks_with_more_accumulation_reads_the_same_steps():
    """2 ranks x accum 1 resumed after 2 micro-batches on 1 rank x accum 2: each later step holds exactly the
    samples the 2-rank run's step would have held (what makes such a resume continue the same training)."""
    from higgs_ds.data.plan import epoch_plan

    rows = uneven_rows()
    two = plan_epoch(rows, 1, 0, PlanSettings(world=2, micro=3, accum=1))
    one = epoch_plan(rows, 1, 0, PlanSettings(world=1, micro=3, accum=2), [(2, 1, 2)])
    steps_two = [np.concatenate([two.batches[0][k], two.batches[1][k]]) for k in range(2, len(two.batches[0]))]
    steps_one = [np.concatenate(one.batches[0][2 * s:2 * s + 2]) for s in range(len(one.batches[0]) // 2)]
    assert len(steps_one) == len(steps_two) and all(np.array_equal(a, b) for a, b in zip(steps_one, steps_two))
