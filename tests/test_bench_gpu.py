"""bench/gpu.py: the v2 architecture has the published size, and the benchmark runs end to end (tiny, on CPU)."""

import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import REPO, free_port


def test_v2_architecture_has_the_published_parameter_counts():
    from boson_multimodal.model.higgs_audio import HiggsAudioConfig, HiggsAudioModel

    from bench.gpu import V2_ARCH

    with torch.device("meta"):
        model = HiggsAudioModel(HiggsAudioConfig(**json.loads(json.dumps(V2_ARCH))))
    total = sum(p.numel() for p in model.parameters())
    audio = sum(p.numel() for n, p in model.named_parameters()
                if "audio_" in n and "text_lm_head" not in n)  # the text head sits in audio_decoder_proj
    assert total / 1e9 == pytest.approx(5.77, abs=0.01)
    assert audio / 1e9 == pytest.approx(2.16, abs=0.01) and (total - audio) / 1e9 == pytest.approx(3.61, abs=0.01)


def test_gpu_benchmark_runs_on_cpu_with_a_tiny_config(tmp_path):
    out = tmp_path / "gpu.json"
    proc = subprocess.run([sys.executable, "-m", "bench.gpu", "--size", "tiny", "--device", "cpu", "--seq-lens", "128",
                           "--batches", "1", "2", "--steps", "2", "--warmup", "1", "--out", str(out)], cwd=REPO,
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "MASTER_PORT": str(free_port())})
    assert proc.returncode == 0, proc.stderr[-3000:]
    cases = json.loads(out.read_text())["cases"]
    assert len(cases) == 4 and all(c["ok"] for c in cases)
    assert {c["activation_checkpointing"] for c in cases} == {False, True}
    assert all(c["tokens_per_s"] > 0 and c["flops_per_token"] > 0 for c in cases)
