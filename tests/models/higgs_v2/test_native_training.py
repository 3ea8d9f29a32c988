"""The native backend (model.backend=native: transformers' HiggsAudioV2ForConditionalGeneration, NativeCollator,
heads only where labels are) trains as the boson backend does: real DeepSpeed ZeRO-2 runs on 2 ranks over gloo,
fp32, the native one in .venv-native (transformers 5), the boson one here (transformers 4.46), from the same fixture
model, shards and seed. Also: it listens while it trains, it resumes exactly, a checkpoint of one backend is refused
by the other, and `higgs-ds synthesize --backend native` speaks with the codes of boson's generation (greedy)."""

import json
import math
import os
import subprocess

import numpy as np
import pytest

from tests.helpers import NATIVE_PY, REPO, launch_training, read_run, require_native_venv, run_cli, train_overrides

pytestmark = pytest.mark.slow


def _run(fixtures_dir, shards, run, backend, steps=6, **kv):
    python = NATIVE_PY if backend == "native" else None
    return launch_training("srun-env", 2, train_overrides(
        fixtures_dir, shards, run, precision="fp32", steps=steps, eval_every=3,
        **{"model.backend": backend, **kv}), python=python, check=False)


@pytest.fixture(scope="module")
def native_run(fixtures_dir, shards, tmp_path_factory):
    require_native_venv()
    run = tmp_path_factory.mktemp("native") / "run"
    rc, out = _run(fixtures_dir, shards, run, "native", **LISTEN)
    assert rc == 0, out[-4000:]
    return run


LISTEN = {"eval.synth_every": 6, "eval.num_prompts": 2, "eval.max_new_tokens": 20, "eval.max_seconds": 300}


@pytest.fixture(scope="module")
def boson_run(fixtures_dir, shards, tmp_path_factory):
    run = tmp_path_factory.mktemp("boson") / "run"
    rc, out = _run(fixtures_dir, shards, run, "boson")
    assert rc == 0, out[-4000:]
    return run


def test_the_native_backend_trains_as_the_boson_backend(native_run, boson_run):
    native, native_evals, s_native = read_run(native_run)
    boson, boson_evals, s_boson = read_run(boson_run)
    assert [r["step"] for r in native] == list(range(1, 7))
    for a, b in zip(native, boson):
        assert (a["text_tokens"], a["audio_tokens"]) == (b["text_tokens"], b["audio_tokens"])
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-6), (a["step"], a["loss"], b["loss"])
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-5), (a["step"], a["grad_norm"], b["grad_norm"])
        for i in range(8):
            assert a[f"audio_loss_cb{i}"] == pytest.approx(b[f"audio_loss_cb{i}"], rel=1e-5)
    assert native[-1]["loss"] < native[0]["loss"] - 0.2  # it learns
    assert [e["step"] for e in native_evals] == [e["step"] for e in boson_evals] == [3, 6]
    for a, b in zip(native_evals, boson_evals):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-6)
        assert (a["audio_top1"], a["audio_top5"]) == (b["audio_top1"], b["audio_top5"])
    [listen] = [json.loads(x) for x in (native_run / "metrics.jsonl").read_text().splitlines()
                if json.loads(x).get("split") == "listen"]
    assert listen["step"] == 6 and listen["prompts"] == 2 and listen["failed"] == 0
    assert 0 < listen["seconds"] <= 20 / 25 + 1e-6 and -1 <= listen["similarity"] <= 1
    assert s_native["rank_weight_checksums"][0] == s_native["rank_weight_checksums"][1]
    assert all(math.isfinite(c) for c in s_native["rank_weight_checksums"])
    # the adapter is saved in the native class's module names
    adapter = (native_run / "checkpoints" / "latest").read_text()
    config = (native_run / "checkpoints" / adapter / "adapter" / "adapter_config.json").read_text()
    assert "audio_mlp" in config


def test_a_native_run_resumes_exactly_and_a_boson_checkpoint_is_refused(native_run, fixtures_dir, shards, tmp_path):
    run = tmp_path / "resumed"
    rc, out = _run(fixtures_dir, shards, run, "native", steps=3, save_every=3)
    assert rc == 0, out[-4000:]
    rc, out = _run(fixtures_dir, shards, run, "boson", steps=6)
    assert rc == 2 and f"model.backend: {run / 'checkpoints' / 'step00000003'} was trained on the native backend" \
        in out and "resume it with model.backend=native" in out, out[-3000:]
    rc, out = _run(fixtures_dir, shards, run, "native", steps=6)
    assert rc == 0 and "at step 3 (epoch 0, batch 3)" in out, out[-4000:]
    straight, _, s_straight = read_run(native_run)
    resumed, _, s_resumed = read_run(run)
    assert [r["loss"] for r in resumed] == [r["loss"] for r in straight]
    assert s_resumed["rank_weight_checksums"] == s_straight["rank_weight_checksums"]


def test_synthesize_on_the_native_backend_gives_the_codes_of_boson_generation(native_run, fixtures_dir, speech,
                                                                             tmp_path):
    ref = json.loads((speech / "utterances.jsonl").read_text().splitlines()[1])
    args = ["synthesize", "--model", fixtures_dir / "model", "--text-tokenizer", fixtures_dir / "tokenizer",
            "--audio-tokenizer", fixtures_dir / "audio_tokenizer", "--ref-audio", speech / ref["audio"],
            "--ref-text", ref["text"], "--text", "One two three.", "--temperature", "0", "--ras-win-len", "0",
            "--max-new-tokens", "80", "--quiet", "--dtype", "fp32"]
    run_cli(*args, "--out", tmp_path / "boson.wav")
    proc = subprocess.run([str(NATIVE_PY), "-m", "higgs_ds.cli", *map(str, args), "--backend", "native", "--out",
                           str(tmp_path / "native.wav")], cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr[-4000:]
    boson, native = np.load(tmp_path / "boson.codes.npy"), np.load(tmp_path / "native.codes.npy")
    assert boson.shape[1] >= 40 and native.shape == boson.shape
    np.testing.assert_array_equal(native, boson)
    report = json.loads((tmp_path / "native.json").read_text())
    assert report["model"]["backend"] == "native" and report["generated"] == 1


def test_a_native_run_exports_its_adapter_and_a_merged_native_model(native_run, fixtures_dir, tiny_model, tmp_path):
    """`higgs-ds export` of a native-backend run: the adapter as trained, and a merged bf16 model that loads in
    HiggsAudioV2ForConditionalGeneration with the logits of the base model + adapter (up to bf16 weights)."""
    import torch

    from higgs_ds.checkpoints.native import boson_to_native
    from higgs_ds.models.higgs_v2.inputs import NativeCollator
    from tests.helpers import native

    def cli(*args):
        proc = subprocess.run([str(NATIVE_PY), "-m", "higgs_ds.cli", *map(str, args)], cwd=REPO, text=True,
                              capture_output=True, timeout=600, env={**os.environ, "PYTHONPATH": str(REPO)})
        return proc.returncode, proc.stdout + proc.stderr

    rc, out = cli("export", "--checkpoint", native_run, "--out", tmp_path / "boson", "--merge", "--layout", "boson")
    assert rc != 0 and "was trained on the native backend: export it with --layout native" in out, out[-2000:]
    for args in ((tmp_path / "adapter",), (tmp_path / "merged", "--merge")):
        rc, out = cli("export", "--checkpoint", native_run, "--layout", "native", "--out", *args)
        assert rc == 0, out[-4000:]
    config = json.loads((tmp_path / "merged" / "config.json").read_text())
    assert config["model_type"] == "higgs_audio_v2" and (tmp_path / "merged" / "tokenizer.json").is_file()

    _, model, reader = tiny_model
    batch = NativeCollator(reader.collator.settings, model.config.audio_out_token_idx)(reader.samples(np.array([0, 1, 2])))
    inputs = {**batch.model_inputs(), "audio_out_mask": batch.attention_mask.bool()}
    torch.save(inputs, tmp_path / "in.pt")
    boson_to_native(fixtures_dir / "model", tmp_path / "base", fixtures_dir / "tokenizer")
    native("logits", "--model", tmp_path / "base", "--adapter", tmp_path / "adapter", "--inputs", tmp_path / "in.pt",
           "--out", tmp_path / "adapted.pt")
    native("logits", "--model", tmp_path / "merged", "--inputs", tmp_path / "in.pt", "--out", tmp_path / "merged.pt")
    native("logits", "--model", tmp_path / "base", "--inputs", tmp_path / "in.pt", "--out", tmp_path / "base.pt")
    adapted, merged, base = (torch.load(tmp_path / f"{n}.pt") for n in ("adapted", "merged", "base"))
    assert (adapted["audio"] - base["audio"]).abs().max() > 1e-3  # the adapter changes the model
    torch.testing.assert_close(merged["text"], adapted["text"], atol=0.05, rtol=0.02)
    torch.testing.assert_close(merged["audio"], adapted["audio"], atol=0.05, rtol=0.02)
    assert (merged["audio"].argmax(-1) == adapted["audio"].argmax(-1)).float().mean() > 0.95


def test_a_boson_run_converted_in_place_resumes_on_the_native_backend(boson_run, fixtures_dir, shards, tmp_path):
    """3 steps on the boson backend, `higgs-ds convert-run`, 3 more on the native one == 6 on the boson backend:
    the adapter, the weights and the Adam moments carry over under their native names."""
    run = tmp_path / "run"
    rc, out = _run(fixtures_dir, shards, run, "boson", steps=3, save_every=3)
    assert rc == 0, out[-4000:]
    rc, out = _run(fixtures_dir, shards, run, "native", steps=6)
    assert rc == 2 and f"or convert the run once with `higgs-ds convert-run {run}`" in out, out[-3000:]
    converted = json.loads(run_cli("convert-run", run).stdout)
    assert converted["converted"] == [str(run / "checkpoints" / "step00000003")]
    assert (run / "checkpoints-boson" / "step00000003" / "adapter").is_dir()  # the originals are kept
    adapter = json.loads((run / "checkpoints" / "step00000003" / "adapter" / "adapter_config.json").read_text())
    assert "audio_decoder_proj" not in json.dumps(adapter)
    assert json.loads(run_cli("convert-run", run).stdout)["converted"] == []  # once is enough
    rc, out = _run(fixtures_dir, shards, run, "native", steps=6)
    assert rc == 0 and "at step 3 (epoch 0, batch 3)" in out, out[-4000:]
    straight, _, _ = read_run(boson_run)
    resumed, _, s_resumed = read_run(run)
    assert [r["step"] for r in resumed] == list(range(1, 7))
    for a, b in zip(resumed, straight):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-6), (a["step"], a["loss"], b["loss"])
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-5), (a["step"], a["grad_norm"], b["grad_norm"])
    assert s_resumed["rank_weight_checksums"][0] == s_resumed["rank_weight_checksums"][1]
