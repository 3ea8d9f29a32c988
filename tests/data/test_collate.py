"""The native collator lays out audio and labels exactly as boson_multimodal's HiggsAudioSampleCollator does: on
seeded random samples covering what shards can hold (no reference clip, several clips, untrained audio, empty clips,
batch size 1, shards with more codebooks than the model reads), every clip's delay-pattern segment, the audio
targets and the text targets equal boson's. (tests/models/higgs_v2/test_inputs.py compares whole model inputs on the
fixture shards through boson's model.)"""

import dataclasses

import numpy as np
import pytest
import torch

from higgs_ds.data.collate import IGNORE, CollatorSettings, Sample
from higgs_ds.models.higgs_v2.inputs import NativeCollator
from tests.oracle.boson_v2 import BosonCollator, load_model

pytestmark = pytest.mark.oracle  # boson_multimodal's collator: runs in .venv-boson


@pytest.fixture(scope="module")
def settings(fixtures_dir):
    from higgs_ds.config import ModelConfig

    config = load_model(ModelConfig(path=str(fixtures_dir / "model"))).config
    s = CollatorSettings.from_config(config)
    assert s.use_delay_pattern and s.return_audio_in_tokens  # the v2 setting, as in the fixture model
    return s


def random_sample(rng: np.random.Generator, settings: CollatorSettings, stored_codebooks: int) -> Sample:
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


def assert_same_layout(settings: CollatorSettings, samples: list[Sample]) -> None:
    ours = NativeCollator(settings, settings.audio_out_token_id)(samples)
    theirs = BosonCollator(settings)(samples)
    # every clip's segment, in token order: boson keeps reference (in) and target (out) clips in two streams
    ids = np.concatenate([s.input_ids for s in samples])
    is_out = ids[(ids == settings.audio_in_token_id) | (ids == settings.audio_out_token_id)] == \
        settings.audio_out_token_id
    frames = np.concatenate([s.frames for s in samples])
    segments = torch.split(ours.audio_input_ids[ours.audio_input_ids_mask].T,
                           (frames + settings.clip_overhead).tolist(), dim=1) if len(frames) else []
    for out, stream in ((True, theirs.audio_out_ids), (False, theirs.audio_in_ids)):
        mine = [seg for seg, o in zip(segments, is_out) if o == out]
        if mine:
            assert torch.equal(torch.cat(mine, dim=1), stream)
        else:
            assert stream is None or stream.numel() == 0
    # audio targets: boson's label_audio_ids[:, 1:] over the columns with a label (the rows our heads predict)
    if theirs.label_audio_ids is not None and theirs.label_audio_ids.numel():
        labels = theirs.label_audio_ids[:, 1:]
        assert torch.equal(ours.audio_targets, labels.T[(labels != IGNORE).any(0)])
    else:
        assert ours.audio_targets.numel() == 0
    # text targets: boson's shifted text labels, in order, less the <|AUDIO|> tokens' (its collator keeps them; its
    # model's expansion drops them with the token, as ours does)
    text = theirs.label_ids[:, 1:]
    assert torch.equal(ours.text_targets, text[(text != IGNORE) & (text != settings.audio_in_token_id)])


@pytest.mark.parametrize("codebooks,stored", [(8, 8), (4, 8), (8, 12)])
def test_random_batches_are_laid_out_as_boson_lays_them_out(settings, codebooks, stored):
    settings = dataclasses.replace(settings, num_codebooks=codebooks)
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
        assert_same_layout(settings, samples)
    assert min(seen.values()) > 0, seen


def test_a_mismatch_between_tokens_and_clips_is_an_error(settings):
    rng = np.random.default_rng(1)
    sample = next(s for s in (random_sample(rng, settings, 8) for _ in range(50)) if len(s.frames) >= 2)
    short = Sample(sample.input_ids, sample.label_ids, sample.codes[:, :sample.frames[0]], sample.frames[:1])
    with pytest.raises(ValueError, match="audio tokens but 1 audio clips"):
        NativeCollator(settings, settings.audio_out_token_id)([short])
