"""The loss against an independent per-sample computation."""

import pytest
import torch
import torch.nn.functional as F

from tests.oracle.boson_v2 import batch_to_inputs, token_sums
from higgs_ds.training.loss import TokenSums, combine

pytestmark = pytest.mark.oracle  # boson_multimodal's model: runs in .venv-boson


def test_loss_matches_an_independent_per_sample_computation(tiny_model):
    """Per-token CE over the batch, computed here sample by sample with plain loops over positions and codebooks."""
    _, base, reader = tiny_model
    rows = [0, 3, 7]
    batch = reader.collate(rows)
    with torch.no_grad():
        out = base.eval()(**batch_to_inputs(batch, "cpu"))
        s = token_sums(out, batch.label_audio_ids)
    text_sum, text_n = 0.0, 0
    for b in range(out.logits.shape[0]):
        for t in range(out.logits.shape[1] - 1):
            y = int(out.expanded_labels[b, t + 1])
            if y != -100:
                text_sum += float(-F.log_softmax(out.logits[b, t].float(), -1)[y])
                text_n += 1
    audio_sum, audio_n, per_cb = 0.0, 0, [0.0] * 8
    labels = batch.label_audio_ids
    for t in range(out.audio_logits.shape[0] - 1):
        for c in range(8):
            y = int(labels[c, t + 1])
            if y != -100:
                v = float(-F.log_softmax(out.audio_logits[t, c], -1)[y])
                audio_sum, audio_n, per_cb[c] = audio_sum + v, audio_n + 1, per_cb[c] + v
    assert int(s.text_tokens) == text_n > 0 and int(s.audio_tokens) == audio_n > 0
    assert float(s.text_sum) == pytest.approx(text_sum, rel=1e-4)
    assert float(s.audio_sum) == pytest.approx(audio_sum, rel=1e-4)
    assert s.codebook_sums.tolist() == pytest.approx(per_cb, rel=1e-4)
    # only the target turn's audio is trained: references (before start_index) carry no audio labels
    target_frames = sum(int(reader.index.rows["target_frames"][r]) for r in rows)
    assert audio_n == 8 * (target_frames + len(rows))  # every frame x codebook, + one stream eos per sample
    loss = combine(s, text_n, audio_n, 0.5, 2.0)
    assert float(loss) == pytest.approx(0.5 * text_sum / text_n + 2.0 * audio_sum / audio_n, rel=1e-4)


def test_device_counts_give_the_loss_that_host_counts_give():
    """The train loop passes the step's label counts as device tensors (no host read): the loss is bit-identical
    to dividing by the same counts as numbers, and a zero count adds nothing."""
    sums = TokenSums(torch.tensor(3.7), torch.tensor(11.3), torch.zeros(8), torch.tensor(7), torch.tensor(40),
                     torch.zeros(8, dtype=torch.long))
    counts = torch.tensor([7.0, 40.0], dtype=torch.float64)
    as_numbers = combine(sums, 7.0, 40.0, 0.5, 2.0)
    as_tensors = combine(sums, counts[0], counts[1], 0.5, 2.0)
    assert as_tensors.dtype == as_numbers.dtype == torch.float32
    assert as_tensors.item() == as_numbers.item() == pytest.approx(0.5 * 3.7 / 7 + 2.0 * 11.3 / 40)
    no_audio = TokenSums(torch.tensor(3.7), torch.tensor(0.0), torch.zeros(0), torch.tensor(7), torch.tensor(0),
                         torch.zeros(0, dtype=torch.long))
    zero = torch.tensor([7.0, 0.0], dtype=torch.float64)
    assert combine(no_audio, zero[0], zero[1], 0.5, 2.0).item() == combine(no_audio, 7.0, 0.0, 0.5, 2.0).item() == \
        pytest.approx(0.5 * 3.7 / 7)
