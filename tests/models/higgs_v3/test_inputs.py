"""Higgs TTS 3's delay pattern, prompt layout and label mask, pinned by vectors written out by hand."""

import numpy as np
import pytest

from higgs_ds.data.collate import IGNORE, Sample
from higgs_ds.data.prompt_formats import prompt_ids
from higgs_ds.models.higgs_v3.inputs import V3Collator, delay, undelay
from higgs_ds.models.higgs_v3.model import AudioConfig

B, E, X = 1024, 1025, IGNORE  # BOC, EOC, no label
IDS = {"<|tts|>": 500, "<|ref_text|>": 501, "<|ref_audio|>": 502, "<|text|>": 503, "<|audio|>": 504}
TWO_FRAMES = np.array([[1] * 8, [2] * 8])  # T = 2: every codebook says 1, then 2
DELAYED = np.array([  # T + 7 = 9 rows: codebook c starts at row c, EOC after its 2 codes
    [1, B, B, B, B, B, B, B],
    [2, 1, B, B, B, B, B, B],
    [E, 2, 1, B, B, B, B, B],
    [E, E, 2, 1, B, B, B, B],
    [E, E, E, 2, 1, B, B, B],
    [E, E, E, E, 2, 1, B, B],
    [E, E, E, E, E, 2, 1, B],
    [E, E, E, E, E, E, 2, 1],
    [E, E, E, E, E, E, E, 2],
])


def test_delay_pattern():
    assert np.array_equal(delay(TWO_FRAMES, B, E), DELAYED)
    assert np.array_equal(undelay(DELAYED), TWO_FRAMES)
    codes = np.random.default_rng(0).integers(0, 1024, (13, 8))
    assert np.array_equal(undelay(delay(codes, B, E)), codes)


def test_prompt_layout():
    assert prompt_ids(IDS, [7, 8], [9], reference=True) == [500, 501, 9, 502, X, 503, 7, 8, 504, X]
    assert prompt_ids(IDS, [7, 8], None, reference=True) == [500, 502, X, 503, 7, 8, 504, X]
    assert prompt_ids(IDS, [7, 8], reference=False) == [500, 503, 7, 8, 504, X]


def test_zero_shot_inputs_and_labels():
    sample = Sample(np.array(prompt_ids(IDS, [7, 8], reference=False)), np.full(6, X), TWO_FRAMES.T, np.array([2]))
    batch = V3Collator(AudioConfig(), IDS["<|audio|>"], pad_id=0)([sample])
    # the target's first 8 rows are fed after <|audio|> (position 4); the last is predicted, never fed
    assert batch.input_ids[0, :13].tolist() == [500, 503, 7, 8, 504] + [X] * 8
    assert batch.input_ids.shape[1] == 16 and batch.attention_mask[0].tolist() == [1] * 13 + [0] * 3
    assert batch.audio_input_positions.tolist() == list(range(5, 13))
    assert np.array_equal(batch.audio_input_rows.numpy(), DELAYED[:8])
    # row 0 from <|audio|>'s position, row t + 1 from row t's
    assert batch.audio_positions.tolist() == list(range(4, 13))
    labels = np.array([  # every code and EOC cell; no BOC cell
        [1, X, X, X, X, X, X, X],
        [2, 1, X, X, X, X, X, X],
        [E, 2, 1, X, X, X, X, X],
        [E, E, 2, 1, X, X, X, X],
        [E, E, E, 2, 1, X, X, X],
        [E, E, E, E, 2, 1, X, X],
        [E, E, E, E, E, 2, 1, X],
        [E, E, E, E, E, E, 2, 1],
        [E, E, E, E, E, E, E, 2],
    ])
    assert np.array_equal(batch.audio_targets.numpy(), labels)
    assert batch.audio_label_count == 16 + 28  # 2 codes x 8 codebooks, 7 + 6 + ... + 0 EOC cells


def test_cloning_inputs_two_samples():
    ref = np.array([[3] * 8])  # one reference frame: 8 delayed rows in the prompt
    cloning = Sample(np.array(prompt_ids(IDS, [7], [9], reference=True)), np.full(8, X),
                     np.concatenate([ref, TWO_FRAMES]).T, np.array([1, 2]))
    zero_shot = Sample(np.array(prompt_ids(IDS, [7, 8], reference=False)), np.full(6, X), TWO_FRAMES.T,
                       np.array([2]))
    batch = V3Collator(AudioConfig(), IDS["<|audio|>"], pad_id=0)([cloning, zero_shot])
    width = batch.input_ids.shape[1]
    # <|tts|> <|ref_text|> 9 <|ref_audio|> [8 reference rows] <|text|> 7 <|audio|> [8 target rows]
    assert batch.input_ids[0, :23].tolist() == [500, 501, 9, 502] + [X] * 8 + [503, 7, 504] + [X] * 8
    assert width == 24
    assert batch.audio_input_positions.tolist() == (list(range(4, 12)) + list(range(15, 23))
                                                    + [width + p for p in range(5, 13)])
    assert np.array_equal(batch.audio_input_rows[:8].numpy(), delay(ref, B, E))
    assert batch.audio_positions.tolist() == list(range(14, 23)) + [width + p for p in range(4, 13)]
    assert batch.audio_label_count == 2 * 44


def test_a_sample_without_a_target_clip_is_refused():
    reference_only = Sample(np.array([500, 502, X, 503, 7]), np.full(5, X), TWO_FRAMES.T, np.array([2]))
    with pytest.raises(ValueError, match="no target clip"):
        V3Collator(AudioConfig(), IDS["<|audio|>"], pad_id=0)([reference_only])
