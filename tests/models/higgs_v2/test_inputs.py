"""NativeCollator against boson_multimodal's own expansion of the same samples (its HiggsAudioModel's forward
returns the expanded ids, masks and labels): the native model's inputs and the heads' targets, position for
position, on every record of the session's shards, a batch of one (boson pads it on the left) and a sample that
trains nothing."""

import numpy as np
import pytest
import torch

from tests.oracle.boson_v2 import batch_to_inputs
from higgs_ds.data.collate import IGNORE
from higgs_ds.models.higgs_v2.inputs import NativeCollator

pytestmark = pytest.mark.oracle  # boson_multimodal's model: runs in .venv-boson


def boson_expansion(model, batch):
    """Per sample, over its real positions: (ids with the audio placeholder, text labels, audio codes, whether
    audio-out), and the flat audio-out positions of the whole batch with boson's shifted audio labels."""
    with torch.no_grad():
        out = model.eval()(**batch)
    cfg = model.config
    audio = out.audio_in_discrete_codes_mask | out.audio_out_mask
    ids = out.expanded_input_ids.clone()
    ids[audio] = cfg.audio_out_token_idx
    codes = torch.zeros(*audio.shape, cfg.audio_num_codebooks, dtype=torch.long)
    if batch["audio_in_ids"] is not None and batch["audio_in_ids"].numel():
        codes[out.audio_in_discrete_codes_mask] = batch["audio_in_ids"].T
    codes[out.audio_out_mask] = batch["audio_out_ids"].T
    keep = out.attention_mask.bool()
    per_sample = [(ids[b][keep[b]], out.expanded_labels[b][keep[b]], codes[b][keep[b]], out.audio_out_mask[b][keep[b]])
                  for b in range(ids.shape[0])]
    return per_sample, out


def ours_per_sample(nb, audio_token_id):
    labels = torch.full(nb.input_ids.shape, IGNORE)
    labels.view(-1)[nb.text_positions + 1] = nb.text_targets
    codes = torch.zeros(*nb.input_ids.shape, nb.audio_input_ids.shape[-1], dtype=torch.long)
    codes[nb.input_ids == audio_token_id] = nb.audio_input_ids[nb.audio_input_ids_mask]
    keep = nb.attention_mask.bool()
    assert all(keep[b, :int(keep[b].sum())].all() for b in range(len(keep)))  # right padding
    assert torch.equal(nb.position_ids[keep], torch.cat([torch.arange(int(k.sum())) for k in keep]))
    return [(nb.input_ids[b][keep[b]], labels[b][keep[b]], codes[b][keep[b]]) for b in range(len(keep))]


@pytest.mark.parametrize("rows", [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9], [10, 11], [3], [0, 4, 8]])
def test_native_inputs_equal_boson_expansion(tiny_model, rows):
    _, model, reader = tiny_model
    cfg = model.config
    samples = reader.samples(np.array(rows))
    if rows == [2, 3]:  # a sample that trains nothing, as the loader sends when a micro-batch is unreadable
        samples[1].label_ids = np.full_like(samples[1].label_ids, IGNORE)
    collator = NativeCollator(reader.collator.settings, cfg.audio_out_token_idx)
    nb = collator(samples)
    theirs, out = boson_expansion(model, batch_to_inputs(reader.collator(samples), "cpu"))
    ours = ours_per_sample(nb, cfg.audio_out_token_idx)
    assert nb.input_ids.shape[1] % 8 == 0 and nb.input_ids.shape[1] == max(len(t[0]) for t in theirs) + \
        (-max(len(t[0]) for t in theirs)) % 8
    for (ids, labels, codes), (b_ids, b_labels, b_codes, _) in zip(ours, theirs):
        assert torch.equal(ids, b_ids) and torch.equal(labels, b_labels) and torch.equal(codes, b_codes)

    # the audio heads' targets: boson's audio_logits[:-1] against label_audio_ids[:, 1:] over the audio-out
    # positions laid end to end, where some codebook has a label
    label_audio = reader.collator(samples).label_audio_ids
    valid = (label_audio[:, 1:] != IGNORE).any(0)
    assert torch.equal(nb.audio_targets, label_audio[:, 1:].T[valid])
    assert nb.audio_label_count == int((label_audio[:, 1:] != IGNORE).sum()) > 0
    assert nb.text_label_count == int((out.expanded_labels[:, 1:] != IGNORE).sum())
    if len(rows) > 1:  # right padding on both sides: the flat positions themselves agree
        outpos = out.audio_out_mask.reshape(-1).nonzero().squeeze(1)
        assert torch.equal(nb.audio_positions, outpos[:-1][valid])
    # every audio frame of the batch has its codes, in order, and nothing else does
    assert int(nb.audio_input_ids_mask.sum()) == sum(int((t[0] == cfg.audio_out_token_idx).sum()) for t in theirs)


def test_a_batch_without_audio_labels_or_text_labels_has_empty_targets(tiny_model):
    _, model, reader = tiny_model
    samples = reader.samples(np.array([0]))
    samples[0].label_ids = np.full_like(samples[0].label_ids, IGNORE)
    nb = NativeCollator(reader.collator.settings, model.config.audio_out_token_idx)(samples)
    assert nb.text_targets.numel() == 0 and nb.audio_targets.shape == (0, 8) and nb.audio_frames > 0


def test_the_collator_refuses_a_clip_count_that_does_not_match_the_audio_tokens(tiny_model):
    _, model, reader = tiny_model
    samples = reader.samples(np.array([0]))
    samples[0].frames = samples[0].frames[:-1]
    with pytest.raises(ValueError, match="audio tokens but"):
        NativeCollator(reader.collator.settings, model.config.audio_out_token_idx)(samples)
