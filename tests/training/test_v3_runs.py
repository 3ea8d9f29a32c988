"""Higgs TTS 3 trained with the commands v2 trains with (only the paths differ): ranks vs accumulation, exact
resume, the other family's shards and tokenizer refused before any process group."""

import json
import os

import numpy as np
import pytest
import torch

from tests.helpers import launch_training, read_run, train_overrides

pytestmark = pytest.mark.slow
LISTEN = {"eval.synth_every": 3, "eval.num_prompts": 2, "eval.max_new_tokens": 20, "eval.top_k": 50}


def v3_overrides(fixtures_dir, shards, run, **kv) -> list[str]:
    model = fixtures_dir / "v3_model"
    return train_overrides(fixtures_dir, shards, run, **{"model.path": model, "model.tokenizer": model, **kv})


@pytest.fixture(scope="module")
def v3_straight(fixtures_dir, v3_shards, tmp_path_factory):
    """2 ranks x micro-batch 2, fp32, 6 steps, evaluated (and listened to) at 3 and 6."""
    run = tmp_path_factory.mktemp("v3-straight") / "run"
    launch_training("srun-env", 2, v3_overrides(fixtures_dir, v3_shards, run, precision="fp32", eval_every=3,
                                                **LISTEN))
    return run


def test_a_v3_run_trains_the_audio_head_only_where_labels_are_and_listens(v3_straight):
    rows, evals, summary = read_run(v3_straight)
    assert [r["step"] for r in rows] == list(range(1, 7))
    assert all(r["text_tokens"] == 0 and r["audio_tokens"] > 0 for r in rows)  # v3 has no text labels
    assert len(set(summary["rank_weight_checksums"])) == 1
    assert evals[-1]["loss"] < evals[0]["loss"]
    for step in (3, 6):
        scores = json.loads((v3_straight / "samples" / f"step{step:08d}" / "scores.json").read_text())
        assert scores["mean"]["prompts"] == 2 and scores["mean"]["failed"] == 0
        assert scores["sampling"]["top_k"] == 50 and "Higgs TTS 3" in scores["sampling"]["generator"]
        for p in scores["prompts"]:  # max_new_tokens counts frames: the delay's 7 rows come on top
            assert 0 < p["frames"] <= 20 and os.path.isfile(p["wav"]) and p["generated"]["similarity"] is not None


def test_v3_two_ranks_equal_one_rank_with_accumulation(v3_straight, fixtures_dir, v3_shards, tmp_path):
    run = tmp_path / "one"
    launch_training("torchrun", 1, v3_overrides(fixtures_dir, v3_shards, run, precision="fp32", eval_every=3,
                                                grad_accum=2))
    two, _, s2 = read_run(v3_straight)
    one, _, s1 = read_run(run)
    for a, b in zip(two, one, strict=True):
        assert a["audio_tokens"] == b["audio_tokens"]
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5), (a["step"], a["loss"], b["loss"])
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4)
    assert s2["rank_weight_checksums"][0] == pytest.approx(s1["rank_weight_checksums"][0], rel=1e-5)


def test_v3_resume_continues_exactly(v3_straight, fixtures_dir, v3_shards, tmp_path):
    run = tmp_path / "resumed"
    kv = dict(precision="fp32", eval_every=3)
    launch_training("srun-env", 2, v3_overrides(fixtures_dir, v3_shards, run, steps=3, **kv))
    _, out = launch_training("srun-env", 2, v3_overrides(fixtures_dir, v3_shards, run, steps=6, **kv))
    assert "at step 3 (epoch 0, batch 3)" in out
    straight, _, s_straight = read_run(v3_straight)
    resumed, _, s_resumed = read_run(run)
    assert [r["loss"] for r in resumed] == [r["loss"] for r in straight]
    assert s_resumed["rank_weight_checksums"] == s_straight["rank_weight_checksums"]


@pytest.mark.parametrize("model, data, message", [
    ("v3_model", "shards", "data.train: {shards} was built for Higgs-Audio v2 (build.json prompt_format 'chatml'), "
                           "but the model {model} is Higgs TTS 3"),
    ("model", "v3_shards", "data.train: {shards} was built for Higgs TTS 3 (build.json prompt_format 'tts3'), but "
                           "the model {model} is Higgs-Audio v2"),
])
def test_shards_of_the_other_family_are_refused_before_any_process_group(request, fixtures_dir, tmp_path, model,
                                                                         data, message):
    shards, model = request.getfixturevalue(data), fixtures_dir / model
    tokenizer = fixtures_dir / ("v3_model" if model.name == "v3_model" else "tokenizer")
    overrides = train_overrides(fixtures_dir, shards, tmp_path / "run", **{"model.path": model,
                                                                          "model.tokenizer": tokenizer})
    rc, out = launch_training("srun-env", 2, overrides, check=False, timeout=300)
    assert rc == 2 and "Traceback" not in out and out.count(message.format(shards=shards, model=model)) == 1
    assert not (tmp_path / "run").exists()


def test_v3_exports_carry_the_licence_and_the_merge_loads_strictly_in_mlx_audio(v3_straight, fixtures_dir,
                                                                                  tmp_path):
    """The adapter and the merged model of a v3 run: licence and NOTICE beside both (and the run's adapter), the
    merge in the native v3 layout with the tie, codec and tokenizer kept, giving the adapter model's logits in
    ours and, loaded strictly, in mlx-audio (fp32 fixture: the merge keeps the base's dtype)."""
    from peft import PeftModel
    from safetensors.torch import load_file

    from higgs_ds.models.higgs_v3.export import DERIVED
    from higgs_ds.models.higgs_v3.heads import forward
    from higgs_ds.models.higgs_v3.inputs import V3Collator
    from higgs_ds.models.higgs_v3.layout import CODEC_PREFIX, TIED, load_model
    from tests.helpers import run_cli
    from tests.models.higgs_v3.test_against_mlx import IDS, LOGITS_ATOL, cloning_sample, mlx

    base = fixtures_dir / "v3_model"
    for out in (v3_straight / "adapter", tmp_path / "adapter"):
        if out != v3_straight / "adapter":
            run_cli("export", "--checkpoint", v3_straight, "--out", out)
        assert (out / "LICENSE").read_text() == (base / "LICENSE").read_text()
        assert (out / "NOTICE").read_text().splitlines()[0] == DERIVED
        assert (out / "adapter_model.safetensors").is_file()
    refused = run_cli("export", "--checkpoint", v3_straight, "--out", tmp_path / "boson", "--layout", "boson",
                      check=False)
    assert refused.returncode != 0 and "Higgs TTS 3 has one checkpoint layout (native)" in refused.stderr

    merged = tmp_path / "merged"
    run_cli("export", "--checkpoint", v3_straight, "--out", merged, "--merge")
    assert {p.name for p in merged.iterdir()} >= {"config.json", "model.safetensors", "tokenizer.json",
                                                    "tokenizer_config.json", "LICENSE", "NOTICE"}
    state, before = load_file(str(merged / "model.safetensors")), load_file(str(base / "model.safetensors"))
    assert all(torch.equal(state[copy], state[source]) for copy, source in TIED.items())
    codec = [k for k in before if k.startswith(CODEC_PREFIX)]
    assert codec and all(torch.equal(state[k], before[k]) for k in codec)
    assert set(state) == set(before)

    sample, inputs, target = cloning_sample(np.random.default_rng(5), 5, 4, 6, 3)
    adapted = PeftModel.from_pretrained(load_model(base), str(v3_straight / "adapter")).eval()
    collator = V3Collator(adapted.get_base_model().audio, IDS["<|audio|>"], pad_id=0)
    batch = collator([sample])
    with torch.no_grad():
        want = forward(adapted, batch).audio_logits.numpy()
        ours = forward(load_model(merged).eval(), batch).audio_logits.numpy()
    with torch.no_grad():
        untrained = forward(load_model(base).eval(), batch).audio_logits.numpy()
    assert np.abs(want - untrained).max() > 100 * LOGITS_ATOL  # the adapter changed the model
    assert np.abs(ours - want).max() < LOGITS_ATOL
    from higgs_ds.models.higgs_v3.inputs import delay

    theirs = mlx("logits", merged, tmp_path, target_rows=delay(target, 1024, 1025)[:-1], **inputs)["logits"]
    diff = float(np.abs(theirs - want).max())
    print(f"max |mlx-audio(merged) - ours(base + adapter)| = {diff:.2e}")
    assert diff < LOGITS_ATOL
