"""Higgs TTS 3 trained with the commands v2 trains with (only the paths differ): ranks vs accumulation, exact
resume, the other family's shards and tokenizer refused before any process group."""

import pytest

from tests.helpers import launch_training, read_run, train_overrides

pytestmark = pytest.mark.slow


def v3_overrides(fixtures_dir, shards, run, **kv) -> list[str]:
    model = fixtures_dir / "v3_model"
    return train_overrides(fixtures_dir, shards, run, **{"model.path": model, "model.tokenizer": model, **kv})


@pytest.fixture(scope="module")
def v3_straight(fixtures_dir, v3_shards, tmp_path_factory):
    """2 ranks x micro-batch 2, fp32, 6 steps, evaluated at 3 and 6."""
    run = tmp_path_factory.mktemp("v3-straight") / "run"
    launch_training("srun-env", 2, v3_overrides(fixtures_dir, v3_shards, run, precision="fp32", eval_every=3))
    return run


def test_a_v3_run_trains_the_audio_head_only_where_labels_are(v3_straight):
    rows, evals, summary = read_run(v3_straight)
    assert [r["step"] for r in rows] == list(range(1, 7))
    assert all(r["text_tokens"] == 0 and r["audio_tokens"] > 0 for r in rows)  # v3 has no text labels
    assert len(set(summary["rank_weight_checksums"])) == 1
    assert evals[-1]["loss"] < evals[0]["loss"]


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
