"""Per-step statistics: sums over micro-batches, named losses, and the reduced copy (one process: the sum is local)."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from higgs_ds.training.loss import TokenSums
from higgs_ds.training.stats import StepStats


def micro_batch(text_sum, audio_sums, text_n, audio_ns, mask_len, frames_in, frames_out):
    sums = TokenSums(torch.tensor(float(text_sum)), torch.tensor(float(sum(audio_sums))),
                     torch.tensor(audio_sums, dtype=torch.float64), torch.tensor(text_n),
                     torch.tensor(sum(audio_ns)), torch.tensor(audio_ns))
    batch = SimpleNamespace(attention_mask=torch.ones(1, mask_len), audio_in_ids=torch.zeros(8, frames_in),
                            audio_out_ids=torch.zeros(8, frames_out))
    return sums, batch


def test_sums_losses_and_reduction_over_micro_batches():
    stats = StepStats(num_codebooks=2)
    stats.add(*micro_batch(6.0, [2.0, 4.0], 3, [1, 2], mask_len=10, frames_in=25, frames_out=50), frame_rate=25)
    stats.add(*micro_batch(2.0, [3.0, 0.0], 1, [3, 0], mask_len=6, frames_in=0, frames_out=25), frame_rate=25)
    total = stats.all_reduced("cpu", stop=True)
    assert (total.text_tokens, total.audio_tokens, total.positions) == (4, 6, 10 + 75 + 6 + 25)
    assert total.audio_seconds == pytest.approx(4.0) and total.stop == 1.0
    assert total.text_loss == pytest.approx(8.0 / 4) and total.audio_loss == pytest.approx(9.0 / 6)
    assert total.codebook_losses() == pytest.approx({"audio_loss_cb0": 5.0 / 4, "audio_loss_cb1": 4.0 / 2})
    assert np.array_equal(stats.codebook_tokens, [4, 2]) and stats.stop == 0.0  # the local copy is unchanged


def test_a_micro_batch_without_audio_adds_no_codebook_sums():
    stats = StepStats(num_codebooks=8)
    sums, batch = micro_batch(1.0, [], 2, [], mask_len=4, frames_in=0, frames_out=0)
    stats.add(sums, batch, frame_rate=25)
    total = stats.all_reduced("cpu")
    assert total.codebook_losses() == {} and total.text_loss == pytest.approx(0.5) and total.stop == 0.0
