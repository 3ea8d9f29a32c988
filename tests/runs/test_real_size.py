"""Both model families at their real size (random weights, bf16, no download) through the real trainer on one CPU
rank under ZeRO-2. Higgs-Audio v2 (5.77B), in the transformers-native layout the hub serves: train, checkpoint,
resume, export the merged model and load it with transformers' HiggsAudioV2ForConditionalGeneration, synthesize
with the checkpoint. (Boson's layout is the same renaming at any size: the tiny model's boson export loads in
boson's class, and the shard writer is tested in 1 MB shards.) Higgs TTS 3 (4.04B): train, merge, and read the
merge with mlx-audio and with ours. Needs 24 GB of memory and 25 GB of free disk under pytest's temporary directory
(one model and one merged export at a time); `make test` runs it (marker real_size). A test is skipped, with the
measured figure, where the disk has less room, or on a CPU whose bf16 matrix products are too slow for it to end in
half an hour (no AVX-512 BF16 or AMX: torch falls back to a scalar bf16 kernel, about 100x slower than its fp32
one)."""

import json
import math
import re
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from tests.helpers import REPO, launch_training, read_run, run_cli, train_overrides

pytestmark = [pytest.mark.slow, pytest.mark.real_size]
PARAMS_V2 = 5.77e9
PARAMS_V3 = 4.043e9
V3_BYTES = 8.9e9  # its bf16 checkpoint: the tied text head is stored as a copy, as on the hub
# 3 steps of about 250 tokens at 4 FLOP per parameter and token (forward, and backward to the activations: the
# base weights are frozen), plus about 300 tokens of prompt and generation at 2
FLOP_NEEDED = (3 * 250 * 4 + 300 * 2) * PARAMS_V2


def bf16_matmul_flops() -> tuple[float, float]:
    """FLOP/s of a bf16 and an fp32 matrix product of a decoder's shape on this CPU, over at least 0.2 s each."""
    import time

    import torch

    rates = []
    for dtype in (torch.bfloat16, torch.float32):
        a, b = torch.randn(64, 1024, dtype=dtype), torch.randn(1024, 1024, dtype=dtype)
        a @ b
        n, start = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - start) < 0.2:
            a @ b
            n += 1
        rates.append(n * 2 * 64 * 1024 * 1024 / elapsed)
    return rates[0], rates[1]


@pytest.fixture(scope="module", autouse=True)
def fast_enough_bf16():
    import torch

    bf16, fp32 = bf16_matmul_flops()
    minutes = FLOP_NEEDED / bf16 / 60
    if minutes > 30:
        pytest.skip(f"this CPU ({torch.backends.cpu.get_cpu_capability()}) multiplies bf16 matrices at "
                    f"{bf16 / 1e9:.1f} GFLOP/s (fp32: {fp32 / 1e9:.0f}): the 5.77B run would take about "
                    f"{minutes / 60:.0f} h; run it on a CPU with AVX-512 BF16 or AMX")


def need_room(need: float, where, what: str) -> None:
    free = shutil.disk_usage(where).free
    if free < need:
        pytest.skip(f"{where} has {free / 1e9:.1f} GB free; {what} needs {need / 1e9:.0f} GB")


@pytest.fixture(scope="module")
def full_size_model(fixtures_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("v2")  # the model and its merged export (11.5 GB each), removed afterwards
    # the bf16 model and one merged export, and the run's checkpoints and logs
    need_room(2 * PARAMS_V2 * 2 + 2e9, root, "the 5.77B run")
    out = root / "model"
    code = ("import sys; from pathlib import Path; from higgs_ds.fixtures import build_full_size_model; "
            "build_full_size_model(Path(sys.argv[1]), Path(sys.argv[2]))")
    subprocess.run([sys.executable, "-c", code, out, fixtures_dir / "tokenizer"], cwd=REPO, check=True, timeout=1200)
    yield out
    shutil.rmtree(root, ignore_errors=True)


def test_higgs_tts_3_at_full_size_trains_and_exports(fixtures_dir, v3_shards, tmp_path):
    """Higgs TTS 3 (4.04B, bf16, random weights) on one CPU rank: train 2 steps, merge the adapter into the bf16
    base, and read the merge with mlx-audio (strictly) and with ours: the same logits, to bf16's precision. The
    resume at real size is the v2 test's (the checkpoint code knows no family; v3's exact resume is
    tests/training/test_v3_runs.py's). Runs before the v2 test, whose 11.5 GB model lives for the module."""
    from safetensors import safe_open

    from higgs_ds.models.higgs_v3.heads import forward
    from higgs_ds.models.higgs_v3.inputs import V3Collator, delay
    from higgs_ds.models.higgs_v3.layout import TIED, load_model
    from tests.models.higgs_v3.test_against_mlx import IDS, cloning_sample, mlx

    need_room(2 * V3_BYTES + 2e9, tmp_path, "the 4.04B run")  # the model, its merge, the run
    model, run, merged = tmp_path / "model", tmp_path / "run", tmp_path / "merged"
    code = ("import sys; from pathlib import Path; from higgs_ds.fixtures import build_v3_model; "
            "build_v3_model(Path(sys.argv[1]), real_size=True)")
    subprocess.run([sys.executable, "-c", code, model], cwd=REPO, check=True, timeout=1200)
    settings = {"model.path": model, "model.tokenizer": model, "data.val": "none", "data.micro_batch_size": 1,
                "lora.rank": 16, "lora.alpha": 32, "optim.lr": 1e-4, "optim.warmup_steps": 1}
    _, out = launch_training("torchrun", 1, train_overrides(fixtures_dir, v3_shards, run, steps=2, **settings),
                             timeout=1800)
    total, trainable = (float(x) for x in re.search(r"([\d.]+)M parameters, ([\d.]+)M trainable", out).groups())
    assert abs(total - trainable - PARAMS_V3 / 1e6) < 30 and 10 < trainable < 100, (total, trainable)
    rows, _, summary = read_run(run)
    assert [r["step"] for r in rows] == [1, 2] and all(math.isfinite(r["loss"]) for r in rows)
    assert abs(rows[0]["audio_loss"] - math.log(1026)) < 2  # a random model starts near ln(codebook size)
    assert summary["peak_rss_gb"] < 20, summary["peak_rss_gb"]
    print(json.dumps({"v3_step_time_s": [r["step_time_s"] for r in rows], "peak_rss_gb": summary["peak_rss_gb"]}))

    run_cli("export", "--checkpoint", run, "--out", merged, "--merge", timeout=1800)
    key = "body.layers.35.mlp.down_proj.weight"
    with safe_open(model / "model.safetensors", "pt") as f:
        base = f.get_tensor(key)
    with safe_open(merged / "model.safetensors", "pt") as f:
        got = f.get_tensor(key)
        assert all(torch.equal(f.get_tensor(copy), f.get_tensor(source)) for copy, source in TIED.items())
    with safe_open(run / "adapter" / "adapter_model.safetensors", "pt") as f:
        prefix = "base_model.model." + key.removesuffix(".weight")
        a, b = f.get_tensor(prefix + ".lora_A.weight"), f.get_tensor(prefix + ".lora_B.weight")
    assert b.abs().sum() > 0
    assert got.dtype == torch.bfloat16 and torch.equal(got, (base.float() + (b @ a) * (32 / 16)).to(torch.bfloat16))
    shutil.rmtree(model)

    sample, inputs, target = cloning_sample(np.random.default_rng(5), 5, 4, 6, 3)
    theirs = mlx("logits", merged, tmp_path, target_rows=delay(target, 1024, 1025)[:-1], **inputs)["logits"]
    ours_model = load_model(merged, "auto").eval()
    with torch.no_grad():
        batch = V3Collator(ours_model.audio, IDS["<|audio|>"], pad_id=0)([sample])
        ours = forward(ours_model, batch).audio_logits.float().numpy()
    del ours_model
    assert ours.shape == theirs.shape == (len(target) + 7, 8, 1026) and np.isfinite(theirs).all()
    # two frameworks in bf16 over 36 layers: measured max |diff| 0.16 on logits up to 4.8, correlation 0.9993
    corr = float(np.corrcoef(ours.ravel(), theirs.ravel())[0, 1])
    print(json.dumps({"v3_merged_vs_mlx_max_abs": float(np.abs(ours - theirs).max()), "correlation": corr}))
    assert corr > 0.99


def test_full_size_trains_resumes_and_exports(full_size_model, fixtures_dir, shards, speech, tmp_path):
    from safetensors import safe_open

    run = tmp_path / "run"
    settings = {"model.path": full_size_model, "model.tokenizer": "none", "data.val": "none",
                "data.micro_batch_size": 1, "lora.rank": 16, "lora.alpha": 32, "optim.lr": 1e-4,
                "optim.warmup_steps": 1}
    _, first = launch_training("torchrun", 1, train_overrides(fixtures_dir, shards, run, steps=2, **settings),
                               timeout=1800)
    total, trainable = (float(x) for x in re.search(r"([\d.]+)M parameters, ([\d.]+)M trainable", first).groups())
    assert abs(total - trainable - PARAMS_V2 / 1e6) < 10 and 10 < trainable < 100, (total, trainable)
    _, resumed = launch_training("torchrun", 1, train_overrides(fixtures_dir, shards, run, steps=3, **settings),
                                 timeout=1800)
    assert "at step 2 (epoch 0, batch 2)" in resumed
    rows, _, summary = read_run(run)
    assert [r["step"] for r in rows] == [1, 2, 3]
    # a random model starts near ln(vocab): 1026 audio codes, 128256 text tokens
    assert all(math.isfinite(r["loss"]) for r in rows)
    assert abs(rows[0]["audio_loss"] - math.log(1026)) < 2
    assert summary["peak_rss_gb"] < 20, summary["peak_rss_gb"]  # 24 GB machines, with headroom
    print(json.dumps({"step_time_s": [r["step_time_s"] for r in rows],
                      "tokens_per_s": [r["tokens_per_s"] for r in rows], "peak_rss_gb": summary["peak_rss_gb"]}))

    # merged in the native layout (the default), loaded by transformers' class: the merged weight of an adapted
    # layer is the fp32 sum base + B @ A * alpha / rank, rounded once to bf16
    merged = full_size_model.parent / "merged"
    start = time.perf_counter()
    run_cli("export", "--checkpoint", run, "--out", merged, "--merge", timeout=1800)
    export_s = time.perf_counter() - start
    check = ("import sys, torch; from transformers import HiggsAudioV2ForConditionalGeneration as M; "
             "m = M.from_pretrained(sys.argv[1], dtype=torch.bfloat16, use_text_head=True); "
             "ids = torch.tensor([[128000, 9906, 1917, 13, 128013]]); "
             "out = m(input_ids=ids); "
             "print(sum(p.numel() for p in m.parameters()), tuple(out.logits.shape), bool(out.logits.isfinite().all()))")
    proc = subprocess.run([sys.executable, "-c", check, merged], cwd=REPO, capture_output=True, text=True,
                          timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    count, shape = proc.stdout.strip().splitlines()[-1].split(maxsplit=1)
    assert abs(int(count) - PARAMS_V2) < 0.01e9 and shape == "(1, 5, 8208) True"
    key = "model.layers.27.audio_mlp.down_proj.weight"
    index = json.loads((full_size_model / "model.safetensors.index.json").read_text())["weight_map"]
    merged_index = json.loads((merged / "model.safetensors.index.json").read_text())["weight_map"]
    with safe_open(full_size_model / index[key], "pt") as f:
        base = f.get_tensor(key)
    with safe_open(merged / merged_index[key], "pt") as f:
        got = f.get_tensor(key)
    with safe_open(run / "adapter" / "adapter_model.safetensors", "pt") as f:
        prefix = "base_model.model." + key.removesuffix(".weight")
        a, b = f.get_tensor(prefix + ".lora_A.weight"), f.get_tensor(prefix + ".lora_B.weight")
    assert b.abs().sum() > 0  # trained away from the zero init
    expected = (base.float() + (b @ a) * (32 / 16)).to(base.dtype)
    assert got.dtype == base.dtype and bool((got == expected).all())
    assert not bool((got == base).all())
    shutil.rmtree(merged)
    print(json.dumps({"native_merged_export_s": round(export_s, 1)}))

    # the run's checkpoint speaks: the 5.77B base in bf16 with the adapter applied in place, transformers' generate
    utt = json.loads((speech / "utterances.jsonl").read_text().splitlines()[0])
    out = tmp_path / "listen" / "hello.wav"
    run_cli("synthesize", "--checkpoint", run, "--audio-tokenizer", fixtures_dir / "audio_tokenizer", "--ref-audio",
            speech / utt["audio"], "--ref-text", utt["text"], "--text", "Hello world.", "--max-new-tokens", 12,
            "--device", "cpu", "--quiet", "--out", out, timeout=1800)
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["generated"] == 1 and report["model"]["dtype"] == "bfloat16"
    assert 0 < report["rows"][0]["frames"] <= 12 and out.is_file()
    print(json.dumps({"synthesis_real_time_factor": report["real_time_factor"],
                      "generate_seconds": report["generate_seconds"], "audio_seconds": report["audio_seconds"]}))
