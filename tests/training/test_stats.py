"""Per-step statistics: sums over micro-batches, named losses, and the reduced copy (one process: the sum is local)."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from higgs_ds.data.collate import IGNORE
from higgs_ds.models.higgs_v2.backend import BACKEND
from higgs_ds.training.loss import TokenSums
from higgs_ds.training.stats import StepStats, step_label_counts


def micro_batch(text_sum, audio_sums, text_n, audio_ns, mask_len, frames_in, frames_out):
    sums = TokenSums(torch.tensor(float(text_sum)), torch.tensor(float(sum(audio_sums))),
                     torch.tensor(audio_sums, dtype=torch.float32), torch.tensor(text_n),
                     torch.tensor(sum(audio_ns)), torch.tensor(audio_ns, dtype=torch.long))
    # the native batch: one position a frame, the frames counted apart
    frames = frames_in + frames_out
    batch = SimpleNamespace(attention_mask=torch.ones(1, mask_len + frames), audio_frames=frames)
    return sums, BACKEND.sizes(batch)


def test_sums_losses_and_reduction_over_micro_batches():
    stats = StepStats(num_codebooks=2, device="cpu")
    stats.add(*micro_batch(6.0, [2.0, 4.0], 3, [1, 2], mask_len=10, frames_in=25, frames_out=50), frame_rate=25)
    stats.add(*micro_batch(2.0, [3.0, 0.0], 1, [3, 0], mask_len=6, frames_in=0, frames_out=25), frame_rate=25,
              skipped=2)
    total = stats.all_reduced(stop=True, also=(torch.tensor([4.0, 6.0], dtype=torch.float64), torch.tensor(0.5)))
    assert (total.text_tokens, total.audio_tokens, total.positions) == (4, 6, 10 + 75 + 6 + 25)
    assert total.audio_seconds == pytest.approx(4.0) and total.stop == 1.0 and total.skipped_samples == 2
    assert total.text_loss == pytest.approx(8.0 / 4) and total.audio_loss == pytest.approx(9.0 / 6)
    assert total.codebook_losses() == pytest.approx({"audio_loss_cb0": 5.0 / 4, "audio_loss_cb1": 4.0 / 2})
    assert total.also == [4.0, 6.0, 0.5]  # the extra device scalars ride along, in order
    assert stats.sums.tolist()[4:] == [5.0, 4.0, 4.0, 2.0] and stats.host["stop"] == 0.0  # the local copy is kept


def test_a_micro_batch_without_audio_adds_no_codebook_sums():
    stats = StepStats(num_codebooks=8, device="cpu")
    sums, batch = micro_batch(1.0, [], 2, [], mask_len=4, frames_in=0, frames_out=0)
    stats.add(sums, batch, frame_rate=25)
    total = stats.all_reduced()
    assert total.codebook_losses() == {} and total.text_loss == pytest.approx(0.5) and total.stop == 0.0
    assert total.also == []


def test_sums_are_float64_of_each_float32_value_as_the_host_arithmetic_was():
    """Summed on the device in float64, the totals equal summing each float32 value read to the host (the numbers
    of earlier runs stay the same)."""
    values = np.random.default_rng(0).random(16, dtype=np.float32) * 100
    stats = StepStats(num_codebooks=1, device="cpu")
    host_sum = 0.0
    for v in values:
        stats.add(*micro_batch(float(v), [float(v)], 1, [1], mask_len=1, frames_in=0, frames_out=1), frame_rate=25)
        host_sum += torch.tensor(float(v)).item()
    total = stats.all_reduced()
    assert total.text_sum == host_sum and total.codebook_sums[0] == host_sum


def test_label_counts_come_from_the_host_batches():
    from higgs_ds.models.higgs_v2.inputs import NativeBatch

    empty = torch.zeros(0, dtype=torch.long)
    batches = [NativeBatch(*[empty] * 6, text_targets=torch.tensor([5, 6]), audio_positions=empty,
                           audio_targets=torch.tensor([[1, IGNORE], [2, 3]])),
               NativeBatch(*[empty] * 6, text_targets=torch.tensor([5, 6]), audio_positions=empty,
                           audio_targets=torch.zeros(0, 2, dtype=torch.long))]
    local, total = step_label_counts([BACKEND.label_counts(b) for b in batches], "cpu")
    assert local.dtype == torch.float64 and local.tolist() == total.tolist() == [4.0, 3.0]
