"""bench/gpu.py: the v2 architecture has the published size, and a failing case is a row. Both families' benchmark
runs end to end (tiny, on CPU) in tests/test_gpu_check.py, inside the offline GPU check."""

import json
import subprocess
import sys

import pytest
import torch

from tests.helpers import REPO


def test_v2_architecture_has_the_published_parameter_counts():
    from transformers import HiggsAudioV2Config, HiggsAudioV2ForConditionalGeneration

    from higgs_ds.checkpoints.native import native_config
    from higgs_ds.fixtures import LLAMA3_AUDIO_DELAY_ID, V2_ARCH

    native = native_config(json.loads(json.dumps(V2_ARCH)), {"<|reserved_special_token_6|>": LLAMA3_AUDIO_DELAY_ID})
    with torch.device("meta"):
        model = HiggsAudioV2ForConditionalGeneration(HiggsAudioV2Config.from_dict(native), use_text_head=True)
    total = sum(p.numel() for p in model.parameters())
    audio = sum(p.numel() for n, p in model.named_parameters() if "audio_" in n)
    assert total / 1e9 == pytest.approx(5.77, abs=0.01)
    assert audio / 1e9 == pytest.approx(2.16, abs=0.01) and (total - audio) / 1e9 == pytest.approx(3.61, abs=0.01)


def test_a_failing_case_is_recorded_and_the_rest_still_run(tmp_path):
    """Cases that cannot finish in time (no process imports torch in 1 s) each become a failed row; the
    benchmark goes on to the next and exits 0 with every row written."""
    out = tmp_path / "gpu.json"
    proc = subprocess.run([sys.executable, "-m", "bench.gpu", "--size", "tiny", "--device", "cpu", "--seq-lens", "64",
                           "--batches", "1", "2", "--case-timeout", "1", "--out", str(out)], cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    cases = json.loads(out.read_text())["cases"]
    assert [(c["micro_batch"], c["activation_checkpointing"]) for c in cases] == [(1, False), (2, False), (1, True),
                                                                                  (2, True)]
    assert all(not c["ok"] and c["error"] == "no result within 1 s" for c in cases)
    assert "4 of 4 cases failed" in proc.stderr
