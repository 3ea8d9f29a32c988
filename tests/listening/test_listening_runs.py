"""Listening during real 2-rank DeepSpeed training: samples, scores, TensorBoard audio, the best checkpoint, early
stopping, report.html in a real headless Chromium, and merged vs adapter synthesis of the trained run."""

import json
import math
import os
import shutil

import numpy as np
import pytest

from tests.helpers import launch_training, read_run, run_cli, train_overrides

pytestmark = pytest.mark.slow
LISTEN = {"steps": 8, "eval_every": 4, "keep_last": 1, "eval.synth_every": 4, "eval.num_prompts": 3,
          "eval.max_new_tokens": 20, "eval.max_seconds": 300, "lora.dropout": 0.1}


@pytest.fixture(scope="module")
def listen_run(fixtures_dir, shards, tmp_path_factory):
    run = tmp_path_factory.mktemp("listen") / "run"
    launch_training("torchrun", 2, train_overrides(fixtures_dir, shards, run, **LISTEN))
    return run


def test_listening_writes_samples_scores_and_tensorboard_audio(listen_run, fixtures_dir, shards, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    rows = [json.loads(x) for x in (listen_run / "metrics.jsonl").read_text().splitlines()]
    listens = [r for r in rows if r.get("split") == "listen"]
    assert [r["step"] for r in listens] == [4, 8]
    for r in listens:
        assert r["prompts"] == 3 and r["failed"] == 0 and r["synth_seconds"] > 0
        assert -1 <= r["similarity"] <= 1 and 1 <= r["dnsmos"] <= 5 and r["wer"] is None  # no ASR model given
        assert 0 < r["seconds"] <= 20 / 25 + 1e-6
    # the audio tokenizer and the scoring models load at the first evaluation, on both ranks (both have prompts),
    # on their own clock
    assert listens[0]["loaded_on_ranks"] == [0, 1] and listens[0]["load_seconds"] > 0
    assert listens[1]["loaded_on_ranks"] == [] and listens[1]["load_seconds"] == 0
    for step in (4, 8):
        scores = json.loads((listen_run / "samples" / f"step{step:08d}" / "scores.json").read_text())
        ids = [p["id"] for p in scores["prompts"]]
        assert len(ids) == 3 and len(set(ids)) == 3  # 2 prompts on rank 0, 1 on rank 1, gathered
        for p in scores["prompts"]:
            assert os.path.isfile(p["wav"]) and os.path.isfile(p["ref_wav"]) and os.path.isfile(p["target_audio"])
            assert p["generated"]["similarity"] is not None
            assert p["ground_truth"]["duration_ratio"] == 1.0 and p["ground_truth"]["similarity"] > 0.5
    evals = [r for r in rows if r.get("split") == "eval"]
    assert [r["step"] for r in evals] == [4, 8]
    for r in evals:  # teacher-forced accuracy per codebook, the signal that needs no generation
        assert 0 <= r["audio_top1"] <= r["audio_top5"] <= 1
        assert all(0 <= r[f"audio_top{k}_cb{i}"] <= 1 for k in (1, 5) for i in range(8))

    events = EventAccumulator(str(listen_run / "tensorboard"), size_guidance={"audio": 0, "images": 0}).Reload()
    audio_tags = sorted(events.Tags()["audio"])
    assert audio_tags == sorted(f"listen/{i}" for i in ids)
    assert all([e.step for e in events.Audio(t)] == [4, 8] for t in audio_tags)
    assert events.Audio(audio_tags[0])[0].sample_rate == 24000
    assert sorted(events.Tags()["images"]) == sorted(f"listen_mel/{i}" for i in ids)
    assert "listen/similarity" in events.Tags()["scalars"] and "eval/audio_top5" in events.Tags()["scalars"]

    # the listening evaluation leaves training as it is: the same run without it has the same losses
    plain = tmp_path / "plain"
    launch_training("torchrun", 2, train_overrides(fixtures_dir, shards, plain, **{**LISTEN,
                                                                                   "eval.synth_every": 0}))
    with_listening, _, _ = read_run(listen_run)
    without, _, _ = read_run(plain)
    assert [r["loss"] for r in with_listening] == [r["loss"] for r in without]


ONE_PROMPT = {"steps": 2, "eval.synth_every": 2, "eval.num_prompts": 1, "eval.max_new_tokens": 10,
              "eval.max_seconds": 300}


def test_a_rank_without_prompts_loads_nothing(fixtures_dir, shards, tmp_path):
    run = tmp_path / "run"
    launch_training("torchrun", 2, train_overrides(fixtures_dir, shards, run, **ONE_PROMPT))
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    [listen] = [r for r in rows if r.get("split") == "listen"]
    assert listen["prompts"] == 1 and listen["failed"] == 0 and listen["loaded_on_ranks"] == [0]
    assert listen["load_seconds"] > 0 and listen["synth_seconds"] > 0
    assert [p.name for p in (run / "samples" / "prompts").glob("*.ref.wav")] != []


def test_a_listening_load_failure_stops_every_rank_with_its_error(fixtures_dir, shards, tmp_path):
    """The audio tokenizer's weights are cut short: its config passes the checks before training, its load fails at
    the first evaluation on rank 0 alone (the only one with a prompt), and both ranks exit with rank 0's error
    instead of rank 1 waiting for it."""
    broken = tmp_path / "audio_tokenizer"
    shutil.copytree(fixtures_dir / "audio_tokenizer", broken)
    weights = broken / "model.pth"
    weights.write_bytes(weights.read_bytes()[:4096])
    build = json.loads((shards / "build.json").read_text())
    run = tmp_path / "run"
    rc, out = launch_training("torchrun", 2, train_overrides(
        fixtures_dir, shards, run, **ONE_PROMPT, **{"eval.audio_tokenizer": broken,
                                                    "eval.semantic_model": build["semantic_model"]}),
        check=False, timeout=300)
    assert rc != 0
    assert "the listening evaluation could not load: rank 0:" in out and out.count("could not load") >= 2
    assert [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2]


def test_the_best_checkpoint_follows_the_eval_loss(listen_run):
    rows = [json.loads(x) for x in (listen_run / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if r.get("split") == "eval"]
    best_step = min(evals, key=lambda r: r["loss"])["step"]
    best = json.loads((listen_run / "best.json").read_text())
    assert best["step"] == best_step and best["select"] == "loss"
    assert best["score"] == pytest.approx(min(r["loss"] for r in evals))
    assert (listen_run / "best").resolve() == (listen_run / "checkpoints" / f"step{best_step:08d}").resolve()
    assert (listen_run / "best" / "adapter" / "adapter_config.json").is_file()


def test_early_stopping_keeps_the_best_checkpoint_past_retention(fixtures_dir, shards, tmp_path):
    """An lr of 1.0 makes the eval loss stall and rise: after eval.patience evaluations without a better one every
    rank stops (exit 0, no requeue), and the best checkpoint outlives keep_last=1."""
    run = tmp_path / "run"
    patience = 2
    rc, out = launch_training("torchrun", 2, train_overrides(
        fixtures_dir, shards, run, steps=30, eval_every=1, keep_last=1, **{"eval.patience": patience,
                                                                             "optim.lr": 1.0,
                                                                             "optim.warmup_steps": 0,
                                                                             "optim.grad_clip": 0}))
    assert rc == 0
    rows, evals, summary = read_run(run)
    best = json.loads((run / "best.json").read_text())
    losses = {r["step"]: r["loss"] for r in evals}
    assert summary["early_stopped"] and summary["step"] == best["step"] + patience < 30
    assert all(losses[s] >= best["score"] for s in losses) and losses[best["step"]] == best["score"]
    assert f"early stop at step {summary['step']}: {patience} evaluations without a better loss score" in out
    assert sorted(p.name for p in (run / "checkpoints").glob("step*")) == \
        [f"step{best['step']:08d}", f"step{summary['step']:08d}"]
    assert (run / "checkpoints" / "latest").read_text() == f"step{summary['step']:08d}"
    assert len(rows) == summary["step"]


def test_report_renders_in_headless_chromium(listen_run, tmp_path):
    from playwright.sync_api import sync_playwright

    from tests.helpers import chromium_args

    report = listen_run / "report.html"
    shot = tmp_path / "report.png"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium"), args=chromium_args())
        page = browser.new_page()
        page.goto(report.as_uri())
        players = page.evaluate("""async () => {
            const els = [...document.querySelectorAll('audio')];
            await Promise.all(els.map(a => a.readyState >= 1 ? 0 : new Promise(done => {
                a.onloadedmetadata = done; a.onerror = done; setTimeout(done, 10000); })));
            return els.map(a => ({ready: a.readyState, duration: a.duration, error: a.error && a.error.code}));
        }""")
        rows = page.locator("table.scores tr.prompt").count()
        means = page.locator("table.scores tr.mean:not(.truth)").count()
        truths = page.locator("table.scores tr.truth:not(.mean)").count()
        plots = page.evaluate("() => [...document.querySelectorAll('svg.plot polyline')].map(l => "
                              "l.getBBox().width)")
        title = page.title()
        page.screenshot(path=str(shot), full_page=True)
        browser.close()
    assert title == f"{listen_run.parent.name}/{listen_run.name} · higgs-ds report"
    assert rows == 2 * 3 and means == 2 and truths == 2 * 3  # 2 evaluations x 3 prompts, each with its ceiling
    assert len(players) == 2 * 3 * 3  # reference, generated, ground truth
    assert all(pl["ready"] >= 1 and pl["error"] is None and pl["duration"] > 0 for pl in players), players
    assert len(plots) >= 6 and all(w > 0 for w in plots)  # training and eval curves drawn
    from PIL import Image

    image = np.asarray(Image.open(shot).convert("L"))
    assert image.shape[0] > 600 and image.std() > 10  # rendered content, not a blank page


def test_merged_and_adapter_synthesis_agree_under_one_seed(listen_run, fixtures_dir, speech, tmp_path):
    """The trained run's adapter (applied in place by peft) and its merged bf16 export say the same thing under one
    seed, computed in fp32 (merged weights are rounded to bf16 once, so agreement is near, not bit-exact)."""
    import soundfile as sf

    merged = tmp_path / "merged"
    run_cli("export", "--checkpoint", listen_run, "--out", merged, "--merge")
    utt = json.loads((speech / "utterances.jsonl").read_text().splitlines()[0])
    common = ["--ref-audio", speech / utt["audio"], "--ref-text", utt["text"], "--text", "Hello world.",
              "--audio-tokenizer", fixtures_dir / "audio_tokenizer", "--max-new-tokens", 40, "--dtype", "fp32",
              "--quiet"]
    run_cli("synthesize", "--checkpoint", listen_run, *common, "--out", tmp_path / "adapter.wav")
    run_cli("synthesize", "--model", merged, *common, "--out", tmp_path / "merged.wav")
    run_cli("synthesize", "--model", fixtures_dir / "model", "--text-tokenizer", fixtures_dir / "tokenizer",
            *common, "--out", tmp_path / "base.wav")
    a, m, b = (np.load(tmp_path / f"{name}.codes.npy") for name in ("adapter", "merged", "base"))
    assert a.shape == m.shape and (a == m).mean() > 0.95, (a.shape, m.shape, (a == m).mean())
    assert a.shape != b.shape or (a != b).any()  # the adapter changed what the model says
    audio, sr = sf.read(tmp_path / "adapter.wav")
    assert sr == 24000 and len(audio) == a.shape[1] * 960
    report = json.loads((tmp_path / "adapter.json").read_text())
    assert report["model"]["adapter"].endswith("adapter") and math.isfinite(report["real_time_factor"])
