"""Our Higgs TTS 3 against mlx-audio's (tests/oracle/mlx_v3.py in .venv-mlx, `make test` builds it): the same tiny
checkpoint with the real key names, loaded strictly by each; mlx-audio builds its own prompt."""

import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from higgs_ds.data.collate import IGNORE, Sample
from higgs_ds.data.prompt_formats import prompt_ids
from higgs_ds.models.higgs_v3.fixture import build_checkpoint
from higgs_ds.models.higgs_v3.heads import forward
from higgs_ds.models.higgs_v3.inputs import V3Collator, delay
from higgs_ds.models.higgs_v3.layout import load_model
from tests.helpers import REPO

MLX_PYTHON = REPO / ".venv-mlx" / "bin" / "python"
IDS = {"<|tts|>": 500, "<|ref_text|>": 501, "<|ref_audio|>": 502, "<|text|>": 503, "<|audio|>": 504}
LOGITS_ATOL = 1e-5  # fp32; measured 2-3e-7 (two frameworks, their own matmul orders)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return build_checkpoint(tmp_path_factory.mktemp("v3") / "model", seed=3)


def mlx(mode: str, checkpoint: Path, tmp_path: Path, **inputs) -> dict:
    if not MLX_PYTHON.exists():
        pytest.fail(f"{MLX_PYTHON} is missing: `make mlx-venv` builds it (make test does)")
    special = np.array([IDS[k] for k in ("<|tts|>", "<|ref_text|>", "<|ref_audio|>", "<|text|>", "<|audio|>")])
    np.savez(tmp_path / "in.npz", special=special, **inputs)
    proc = subprocess.run([str(MLX_PYTHON), str(REPO / "tests/oracle/mlx_v3.py"), mode, str(checkpoint),
                           str(tmp_path / "in.npz"), str(tmp_path / "out.npz")], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return dict(np.load(tmp_path / "out.npz"))


def cloning_sample(rng, ref_frames: int, frames: int, text_len: int, ref_text_len: int):
    text = rng.integers(0, 500, text_len).tolist()
    ref_text = rng.integers(0, 500, ref_text_len).tolist()
    ref = rng.integers(0, 1024, (ref_frames, 8))
    target = rng.integers(0, 1024, (frames, 8))
    ids = np.array(prompt_ids(IDS, text, ref_text, reference=True))
    sample = Sample(ids, np.full(len(ids), IGNORE), np.concatenate([ref, target]).T, np.array([ref_frames, frames]))
    return sample, dict(text=np.array(text), ref_text=np.array(ref_text), ref_rows=delay(ref, 1024, 1025)), target


def test_logits_equal_mlx_audio(checkpoint, tmp_path):
    rng = np.random.default_rng(0)
    model = load_model(checkpoint).eval()
    collator = V3Collator(model.audio, IDS["<|audio|>"], pad_id=0)
    long, long_inputs, long_target = cloning_sample(rng, 6, 5, 7, 4)
    short, short_inputs, short_target = cloning_sample(rng, 3, 2, 3, 2)
    batch = collator([long, short])  # padding, two references of different lengths
    with torch.no_grad():
        ours = forward(model, batch).audio_logits.numpy()
    starts = [0, len(long_target) + 7]
    for (inputs, target), start in zip(((long_inputs, long_target), (short_inputs, short_target)), starts):
        rows = delay(target, 1024, 1025)
        theirs = mlx("logits", checkpoint, tmp_path, target_rows=rows[:-1], **inputs)["logits"]
        mine = ours[start:start + len(rows)]
        assert mine.shape == theirs.shape == (len(target) + 7, 8, 1026)
        diff = float(np.abs(mine - theirs).max())
        print(f"max |ours - mlx-audio| = {diff:.2e} over logits of scale {np.abs(theirs).max():.2f}")
        assert diff < LOGITS_ATOL
        assert (mine.argmax(-1) == theirs.argmax(-1)).all()


def test_greedy_generation_equals_mlx_audio(checkpoint, tmp_path):
    from higgs_ds.models.higgs_v3.generation import generate_rows

    rng = np.random.default_rng(1)
    model = load_model(checkpoint).eval()
    collator = V3Collator(model.audio, IDS["<|audio|>"], pad_id=0)
    sample, inputs, _ = cloning_sample(rng, 4, 1, 5, 3)
    prompt = Sample(sample.input_ids[:-1], sample.label_ids[:-1], sample.codes[:, :4], sample.frames[:1])
    ids, positions, rows = collator.prompt_tensors(prompt)
    with torch.no_grad():
        embeds = model.embed(ids, positions, rows)
    ours = generate_rows(model, embeds, max_rows=30)
    theirs = mlx("generate", checkpoint, tmp_path, max_rows=np.array(30), **inputs)["rows"]
    assert ours.shape == theirs.shape == (30, 8)
    assert np.array_equal(ours, theirs)
    assert (ours[0, 1:] == 1024).all() and (ours[6, 7] == 1024)  # the forced ramp


def test_the_row_sampler_winds_down_as_mlx_audio_steps(tmp_path):
    """Logits that say EOC on codebook 0 at row 3 (ignored: the ramp) and at row 10: six more rows, then done."""
    from higgs_ds.models.higgs_v3.generation import RowSampler, Sampling
    from higgs_ds.models.higgs_v3.model import AudioConfig

    logits = np.random.default_rng(2).normal(size=(20, 8, 1026)).astype(np.float32)
    logits[[3, 10], 0, 1025] = 100.0
    sampler, ours = RowSampler(AudioConfig(), Sampling()), []
    for row in logits:
        ours.append(sampler(torch.from_numpy(row)).numpy())
        if sampler.done:
            break
    assert len(ours) == 17 and ours[10][0] == 1025 and ours[3][0] == 1025
    theirs = mlx("steps", Path(), tmp_path, logits=logits, text=np.zeros(0), ref_text=np.zeros(0))["rows"]
    assert np.array_equal(np.stack(ours), theirs)
