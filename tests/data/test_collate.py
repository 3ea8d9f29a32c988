"""BatchCollator builds exactly the batches of boson_multimodal's HiggsAudioSampleCollator: on every planned batch
of real shards, and on seeded random samples covering what shards can hold (no reference clip, several clips,
untrained audio, empty clips, batch size 1) under every collator setting the model config can choose."""

import dataclasses

import numpy as np
import pytest

from higgs_ds.data.collate import BatchCollator, BosonCollator, CollatorSettings, Sample, batch_differences, \
    check_collator, make_collator

pytestmark = pytest.mark.oracle  # boson_multimodal's model: runs in .venv-boson


@pytest.fixture(scope="module")
def setup(shards, fixtures_dir):
    from higgs_ds.checkpoints.model import load_model, load_tokenizer
    from higgs_ds.config import ModelConfig
    from higgs_ds.data.loader import BatchReader
    from higgs_ds.data.shard_index import ShardIndex

    mcfg = ModelConfig(path=str(fixtures_dir / "model"), tokenizer=str(fixtures_dir / "tokenizer"))
    config = load_model(mcfg).config
    return config, BatchReader(ShardIndex.load(shards), load_tokenizer(mcfg), make_collator(config))


def assert_same(settings: CollatorSettings, samples: list[Sample]) -> None:
    ours, theirs = BatchCollator(settings)(samples), BosonCollator(settings)(samples)
    assert batch_differences(ours, theirs) == []


def test_planned_batches_of_real_shards_are_identical(setup):
    from higgs_ds.data.plan import PlanSettings, plan_epoch

    config, reader = setup
    settings = CollatorSettings.from_config(config)
    assert settings.use_delay_pattern and settings.return_audio_in_tokens  # the v2 setting, as in the fixture model
    n = 0
    for budget in (0, 300, 900):
        plan = plan_epoch(reader.index.rows, 0, 0, PlanSettings(world=1, micro=3, token_budget=budget))
        for rows in plan.batches[0]:
            samples = reader.samples(rows)
            batch = reader.collate(rows)
            assert batch_differences(batch, BosonCollator(settings)(samples)) == []
            assert (batch.label_audio_ids != -100).any()  # the target clips train
            n += 1
    assert n >= 6
    untrained = reader.samples([0])
    untrained[0].label_ids[:] = -100  # the stand-in for an all-corrupt batch
    assert_same(settings, untrained)


def random_sample(rng: np.random.Generator, settings: CollatorSettings, stored_codebooks: int = 8) -> Sample:
    """Text with 0-3 audio tokens (in or out) at random places, labels on a random suffix, clips of 0-40 frames."""
    n_text = int(rng.integers(2, 30))
    ids = [t for t in rng.integers(0, 300, n_text) if t not in (settings.audio_in_token_id,
                                                                settings.audio_out_token_id)]
    clips = int(rng.integers(0, 4))
    for _ in range(clips):
        token = settings.audio_out_token_id if rng.random() < 0.6 else settings.audio_in_token_id
        ids.insert(int(rng.integers(0, len(ids) + 1)), token)
    input_ids = np.array(ids, dtype=np.int64)
    labels = input_ids.copy()
    labels[: int(rng.integers(0, len(ids) + 1))] = -100
    frames = rng.integers(0, 41, clips)
    codes = rng.integers(0, 1024, (stored_codebooks, int(frames.sum()))).astype(np.int16)
    return Sample(input_ids, labels, codes, frames.astype(np.int64))


@pytest.mark.parametrize("delay,audio_in,codebooks,stored", [(True, True, 8, 8), (False, True, 8, 8),
                                                             (True, False, 8, 8), (True, True, 4, 8),
                                                             (True, True, 8, 4)])
def test_random_batches_are_identical_for_every_setting(setup, delay, audio_in, codebooks, stored):
    config, _ = setup
    settings = dataclasses.replace(CollatorSettings.from_config(config), use_delay_pattern=delay,
                                   return_audio_in_tokens=audio_in, num_codebooks=codebooks)
    rng = np.random.default_rng(0)
    seen = {"one sample": 0, "untrained audio out": 0, "no audio": 0, "empty clip": 0, "audio in only": 0}
    for _ in range(150):
        samples = [random_sample(rng, settings, stored) for _ in range(int(rng.integers(1, 6)))]
        ids = np.concatenate([s.input_ids for s in samples])
        labels = np.concatenate([s.label_ids for s in samples])
        frames = np.concatenate([s.frames for s in samples])
        seen["one sample"] += len(samples) == 1
        seen["untrained audio out"] += bool((labels[ids == settings.audio_out_token_id] < 0).any())
        seen["no audio"] += len(frames) == 0
        seen["empty clip"] += bool((frames == 0).any())
        seen["audio in only"] += len(frames) > 0 and not (ids == settings.audio_out_token_id).any()
        assert_same(settings, samples)
    assert min(seen.values()) > 0, seen


def test_a_mismatch_between_tokens_and_clips_is_an_error(setup):
    config, reader = setup
    sample = reader.samples([0])[0]
    short = Sample(sample.input_ids, sample.label_ids, sample.codes[:, :sample.frames[0]], sample.frames[:1])
    with pytest.raises(ValueError, match="audio tokens but 1 audio clips"):
        reader.collator([short])


def test_training_refuses_a_collator_that_differs(setup):
    config, reader = setup
    samples = reader.samples(np.arange(4))
    check_collator(reader.collator, samples, "shards")  # the real one passes

    class OffByOne(BatchCollator):
        def __call__(self, samples):
            batch = super().__call__(samples)
            batch.label_audio_ids[0, -1] = 0
            return batch

    with pytest.raises(RuntimeError, match=r"different batches .* shards \(label_audio_ids: values differ\).*"
                                           r"data.collator=boson"):
        check_collator(OffByOne(CollatorSettings.from_config(config)), samples, "shards")


def test_plan_costs_equal_the_collated_sequence_length(setup):
    """The token-budget plan prices a sample at the length the model runs: text + audio frames + each clip's
    overhead (stream bos/eos and the delay pattern), which CollatorSettings derives from the model config."""
    from higgs_ds.data.plan import V2_CLIP_OVERHEAD, sample_costs

    config, reader = setup
    overhead = CollatorSettings.from_config(config).clip_overhead
    assert overhead == V2_CLIP_OVERHEAD == 9  # 8 codebooks with the delay pattern
    costs = sample_costs(reader.index.rows, overhead)
    for i in range(len(reader.index)):
        batch = reader.collate(np.array([i]))
        audio = sum(x.shape[-1] for x in (batch.audio_in_ids, batch.audio_out_ids) if x is not None)
        assert int(batch.attention_mask.sum()) + audio == costs[i]
