"""Real DeepSpeed ZeRO-2 training over gloo on CPU: learning, rank agreement, batch-split equivalence, exact resume,
adapter and merged export, the three launch forms."""

import json
import math

import pytest
import torch

from tests.helpers import launch_training, read_run, run_cli, train_overrides

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def bf16_run(fixtures_dir, shards, tmp_path_factory):
    """`deepspeed --num_gpus 2 higgs_ds/train.py --deepspeed ds_configs/zero2.json`, bf16, 16 steps."""
    run = tmp_path_factory.mktemp("bf16") / "run"
    launch_training("deepspeed", 2, train_overrides(fixtures_dir, shards, run, steps=16, eval_every=8, save_every=8,
                                                    keep_last=1, **{"lora.modules_to_save": "[audio_lm_head]"}))
    return run


@pytest.fixture(scope="module")
def fp32_straight(fixtures_dir, shards, tmp_path_factory):
    """2 ranks x micro-batch 2, fp32, 6 steps, launched the way srun starts tasks."""
    run = tmp_path_factory.mktemp("straight") / "run"
    launch_training("srun-env", 2, train_overrides(fixtures_dir, shards, run, precision="fp32"))
    return run


def test_two_rank_bf16_run_learns_and_ranks_agree(bf16_run):
    rows, evals, summary = read_run(bf16_run)
    assert [r["step"] for r in rows] == list(range(1, 17))
    first, last = rows[0], rows[-1]
    for key in ("loss", "text_loss", "audio_loss", "lr", "grad_norm", "tokens_per_s", "audio_seconds_per_s"):
        assert all(math.isfinite(r[key]) for r in rows), key
    assert first["audio_loss"] == pytest.approx(math.log(1026), rel=0.1)  # random init: about ln(codebook size)
    assert last["audio_loss"] < first["audio_loss"] - 0.5  # a model that learns nothing stays at ln 1026
    assert last["text_loss"] < first["text_loss"]
    assert rows[0]["lr"] < rows[1]["lr"] and rows[-1]["lr"] < rows[5]["lr"]  # warmup, then decay
    assert all(f"audio_loss_cb{i}" in last for i in range(8))
    assert [e["step"] for e in evals] == [8, 16] and evals[1]["audio_loss"] < evals[0]["audio_loss"]
    checks = summary["rank_weight_checksums"]
    assert len(checks) == 2 and checks[0] == checks[1]
    ckpts = sorted(p.name for p in (bf16_run / "checkpoints").glob("step*"))
    best = json.loads((bf16_run / "best.json").read_text())  # eval.select=loss by default
    assert best["step"] == min(evals, key=lambda e: e["loss"])["step"]
    assert ckpts == sorted({f"step{best['step']:08d}", "step00000016"})  # keep_last=1 keeps the last and the best
    assert (bf16_run / "checkpoints" / "latest").read_text() == "step00000016"
    assert (bf16_run / "config.yaml").is_file() and list((bf16_run / "tensorboard").glob("events.*"))


def test_adapter_loads_with_peft_and_merged_export_matches(bf16_run, fixtures_dir, native_model, tmp_path):
    from peft import PeftModel
    from safetensors.torch import load_file

    from higgs_ds.models.higgs_v2.heads import forward
    from higgs_ds.models.higgs_v2.model import load_native_model

    adapter = bf16_run / "adapter"
    weights = load_file(adapter / "adapter_model.safetensors")
    assert weights and all(t.dtype == torch.float32 for t in weights.values())  # fp32 master weights
    assert any("lora_B" in k and t.abs().sum() > 0 for k, t in weights.items())  # trained, not the zero init
    assert any("audio_lm_head" in k for k in weights)  # modules_to_save exported too

    _, base, reader = native_model
    peft_model = PeftModel.from_pretrained(base, str(adapter)).eval()
    batch = reader.collate([0, 1])
    with torch.no_grad():
        ref = forward(peft_model, batch)

    out = tmp_path / "merged"
    run_cli("export", "--checkpoint", bf16_run, "--out", out, "--merge")
    merged = load_native_model(out, torch.bfloat16).eval()
    assert all(p.dtype == torch.bfloat16 for p in merged.parameters())
    assert not any("lora" in n for n, _ in merged.named_parameters())
    with torch.no_grad():
        got = forward(load_native_model(out, torch.float32).eval(), batch)
    # merged weights are stored in bf16: equal to the adapter model up to bf16 rounding of the weights
    assert got.sums.text_sum.item() == pytest.approx(ref.sums.text_sum.item(), rel=0.02)
    torch.testing.assert_close(got.audio_logits, ref.audio_logits, atol=0.05, rtol=0.02)
    assert (got.audio_logits.argmax(-1) == ref.audio_logits.argmax(-1)).float().mean() > 0.95


def test_two_ranks_equal_one_rank_with_accumulation(fp32_straight, fixtures_dir, shards, tmp_path):
    """2 ranks x micro-batch 2 == 1 rank x accumulation 2 x micro-batch 2 (fp32): same samples per step, and the
    per-token loss is normalised over the whole step, so losses agree to float rounding (rel 1e-5)."""
    run = tmp_path / "one"
    launch_training("torchrun", 1, train_overrides(fixtures_dir, shards, run, precision="fp32", grad_accum=2))
    two, _, s2 = read_run(fp32_straight)
    one, _, s1 = read_run(run)
    for a, b in zip(two, one):
        assert a["text_tokens"] == b["text_tokens"] and a["audio_tokens"] == b["audio_tokens"]
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5), (a["step"], a["loss"], b["loss"])
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4)
    assert s2["rank_weight_checksums"][0] == pytest.approx(s1["rank_weight_checksums"][0], rel=1e-5)


def test_resume_continues_exactly(fp32_straight, fixtures_dir, shards, tmp_path):
    """6 straight steps == 3 steps + resume=auto + 3 steps: identical losses (fp32, bit-exact)."""
    run = tmp_path / "resumed"
    launch_training("srun-env", 2, train_overrides(fixtures_dir, shards, run, precision="fp32", steps=3))
    _, out = launch_training("srun-env", 2, train_overrides(fixtures_dir, shards, run, precision="fp32", steps=6))
    assert "resumed from" in out and "at step 3 (epoch 0, batch 3)" in out
    straight, _, s_straight = read_run(fp32_straight)
    resumed, _, s_resumed = read_run(run)
    assert [r["step"] for r in resumed] == list(range(1, 7))
    assert [r["loss"] for r in resumed] == [r["loss"] for r in straight]
    assert [r["lr"] for r in resumed] == [r["lr"] for r in straight]
    assert s_resumed["rank_weight_checksums"] == s_straight["rank_weight_checksums"]


def test_a_run_resumes_on_fewer_and_on_more_ranks(fp32_straight, fixtures_dir, shards, tmp_path):
    """A 2-rank checkpoint (step 2, mid-epoch) resumes on 1 rank with accumulation 2 and continues exactly as the
    2-rank run did: its trainable weights, Adam state and schedule carry over, re-partitioned, and the rest of the
    epoch is dealt to the one rank in the order the two would have read it (fp32: the losses of steps 3-6 equal the
    straight run's). On 3 ranks it continues to the configured steps with every rank agreeing; the epoch's two
    unread micro-batches cannot be split equally over 3 ranks and are left out, as the log says. A checkpoint of
    the previous version (no trainable_state.pt) is refused before loading, naming what cannot carry over."""
    import shutil

    from higgs_ds.checkpoints.saving import MANIFEST, TRAINABLE_STATE, file_manifest

    run = tmp_path / "run"
    launch_training("srun-env", 2, train_overrides(fixtures_dir, shards, run, precision="fp32", steps=2))
    ckpt = run / "checkpoints" / "step00000002"
    saved = torch.load(ckpt / TRAINABLE_STATE, weights_only=True)
    assert saved["world"] == 2 and saved["step"] == 2.0
    assert all(set(v) == {"fp32", "exp_avg", "exp_avg_sq"} for v in saved["params"].values())
    three, old = tmp_path / "three", tmp_path / "old"
    shutil.copytree(run, three, symlinks=True)
    shutil.copytree(run, old, symlinks=True)

    _, out = launch_training("torchrun", 1, train_overrides(fixtures_dir, shards, run, precision="fp32",
                                                            grad_accum=2))
    assert "resumed on 1 ranks x 2 accumulation steps a checkpoint written on 2 x 1" in out
    assert "written on 2 ranks, loaded on 1: trainable weights and Adam state re-partitioned" in out
    straight, _, s_straight = read_run(fp32_straight)
    resumed, _, s_resumed = read_run(run)
    assert [r["step"] for r in resumed] == list(range(1, 7))
    assert [r["loss"] for r in resumed] == pytest.approx([r["loss"] for r in straight], rel=1e-6)
    assert [r["grad_norm"] for r in resumed] == pytest.approx([r["grad_norm"] for r in straight], rel=1e-5)
    assert [r["lr"] for r in resumed] == [r["lr"] for r in straight]
    assert s_resumed["rank_weight_checksums"][0] == pytest.approx(s_straight["rank_weight_checksums"][0], rel=1e-6)

    _, out = launch_training("srun-env", 3, train_overrides(fixtures_dir, shards, three, precision="fp32"))
    rows, _, summary = read_run(three)
    assert [r["step"] for r in rows] == list(range(1, 7)) and summary["step"] == 6
    checks = summary["rank_weight_checksums"]
    assert len(checks) == 3 and len(set(checks)) == 1
    assert "epoch 0: 0 micro-batches per rank, 4 of 12 samples left out" in out
    assert all(r["text_tokens"] and r["audio_tokens"] for r in rows[2:])  # 3 ranks x 2 samples a step

    (old / "checkpoints" / "step00000002" / TRAINABLE_STATE).unlink()  # as the previous version wrote it
    (old / "checkpoints" / "step00000002" / MANIFEST).write_text(
        json.dumps(file_manifest(old / "checkpoints" / "step00000002")))
    rc, out = launch_training("srun-env", 1, train_overrides(fixtures_dir, shards, old, precision="fp32"),
                              check=False)
    assert rc == 2 and "Traceback" not in out
    assert "was written on 2 ranks by a version of higgs-ds that kept no trainable_state.pt" in out
    assert "resume on 2 ranks, or start over with resume=never" in out


def test_resuming_from_an_older_checkpoint_leaves_one_row_per_step(fp32_straight, fixtures_dir, shards, tmp_path):
    """Steps logged after the checkpoint a run resumes from are logged again: metrics.jsonl keeps the resumed run's
    row for each step (train and eval), and the losses still equal the straight run's."""
    run = tmp_path / "older"
    settings = dict(precision="fp32", save_every=2, keep_last=3, eval_every=2)
    launch_training("torchrun", 2, train_overrides(fixtures_dir, shards, run, **settings))
    older = run / "checkpoints" / "step00000004"
    launch_training("torchrun", 2, train_overrides(fixtures_dir, shards, run, resume=older, **settings))
    rows, evals, _ = read_run(run)
    straight, _, _ = read_run(fp32_straight)
    assert [r["step"] for r in rows] == list(range(1, 7)) and [r["step"] for r in evals] == [2, 4, 6]
    assert [r["loss"] for r in rows] == [r["loss"] for r in straight]
    times = [r["time"] for r in rows]
    assert times == sorted(times) and times[4] > times[3] + 1  # steps 5 and 6 come from the second run


def test_non_finite_steps_are_skipped_on_every_rank_then_stop(fixtures_dir, shards, tmp_path):
    """A loss weight of 1e38 overflows fp32 to inf: DeepSpeed skips each update on all ranks; we count the skips
    and stop with a clear error once max_skipped_steps is exceeded (instead of training on garbage or hanging)."""
    run = tmp_path / "nan"
    rc, out = launch_training("torchrun", 2, train_overrides(fixtures_dir, shards, run, precision="fp32",
                                                             steps=10, max_skipped_steps=2,
                                                             **{"loss.text_weight": 1e38}), check=False, timeout=300)
    assert rc != 0
    assert "step 1: non-finite gradients on some rank; every rank skipped the update (1 skipped so far)" in out
    assert "3 steps had non-finite loss or gradients (max_skipped_steps=2)" in out
    assert not (run / "summary.json").exists()  # it stopped; it did not finish


def test_a_run_killed_by_its_learning_rate_stops_as_diverged_and_resumes_from_the_last_good_step(
        fixtures_dir, shards, tmp_path):
    """optim.lr=1e6: step 2's update leaves every logit equal; from step 3 the gradient norm is exactly 0.0. The
    run stops at step 5 (diverged_steps=3) on every rank with exit 4 and one plain message; the checkpoints of
    step 2 on are dead and go, `latest` stays step 1's, nothing is exported, summary.json says why. The same
    command with a sane learning rate then resumes at step 1 and finishes; its step 2 sees the gradient the diverged
    run saw there (large: step 1 trained at lr 5e5, the warm-up's first step). (keep_last=5: retention must leave
    a checkpoint older than the guard's diverged_steps + 1 window.) Evaluated every step, the dead model's uniform
    loss scores better than the random start, so best moves to a dead step: it goes back to the last good one."""
    run = tmp_path / "run"
    rc, out = launch_training("srun-env", 2, train_overrides(fixtures_dir, shards, run, steps=12, save_every=1,
                                                             keep_last=5, eval_every=1, **{"optim.lr": 1e6}),
                              check=False)
    rows, _, summary = read_run(run)
    assert rc == 4 and "Traceback" not in out
    assert [r["grad_norm"] for r in rows[2:]] == [0.0, 0.0, 0.0] and rows[1]["grad_norm"] > 1
    step_2_grad_norm = rows[1]["grad_norm"]
    assert out.count("error: step 5: the run diverged and can no longer learn: the gradient norm was exactly 0.0 at "
                     "steps 3-5 while they had labels to train on") == 1
    assert "the last good checkpoint" in out and "step00000001, stays latest" in out
    assert (run / "checkpoints" / "latest").read_text().strip() == "step00000001"
    assert sorted(p.name for p in (run / "checkpoints").glob("step*")) == ["step00000001"]
    assert not (run / "adapter").exists()
    assert summary["stopped_by"] == "diverged" and summary["adapter"] is None
    assert summary["diverged"] == {"step": 5, "first_dead_step": 3, "evidence": summary["diverged"]["evidence"]}
    assert summary["checkpoint"].endswith("step00000001")
    # the dead model's uniform eval loss beat step 1's random one: best had moved to step 2, and goes back to 1
    assert (run / "checkpoints" / "best").read_text() == "step00000001"
    assert (run / "best").resolve() == (run / "checkpoints" / "step00000001").resolve()
    assert json.loads((run / "best.json").read_text())["step"] == 1

    _, out = launch_training("torchrun", 2, train_overrides(fixtures_dir, shards, run, steps=4, save_every=1))
    rows, _, summary = read_run(run)
    assert "resumed from" in out and "step00000001 at step 1" in out
    assert [r["step"] for r in rows] == [1, 2, 3, 4] and summary["stopped_by"] is None
    assert rows[1]["grad_norm"] == pytest.approx(step_2_grad_norm, rel=1e-6)
    assert all(0 < r["grad_norm"] < math.inf for r in rows[1:]) and (run / "adapter").is_dir()


def test_token_budget_run_interrupted_mid_epoch_resumes_on_the_same_samples(fixtures_dir, shards, tmp_path):
    """Token-budget batches read by 2 workers per rank: 5 straight steps == 2 steps + resume + 3 (mid-epoch)."""
    kv = dict(precision="fp32", steps=5, **{"data.token_budget": 700, "data.num_workers": 2,
                                              "data.max_batch_size": 4})
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    launch_training("torchrun", 2, train_overrides(fixtures_dir, shards, straight, **kv))
    launch_training("torchrun", 2, train_overrides(fixtures_dir, shards, resumed, **{**kv, "steps": 2}))
    _, out = launch_training("torchrun", 2, train_overrides(fixtures_dir, shards, resumed, **kv))
    assert "at step 2 (epoch 0, batch 2)" in out  # mid-epoch: the epoch has more batches than that
    a, _, sa = read_run(straight)
    b, _, sb = read_run(resumed)
    assert [(r["loss"], r["text_tokens"], r["audio_tokens"]) for r in a] == \
           [(r["loss"], r["text_tokens"], r["audio_tokens"]) for r in b]
    assert sa["rank_weight_checksums"] == sb["rank_weight_checksums"]


@pytest.mark.parametrize("damage, message", [
    ("delete", "1 of 3 shards do not match index.json (shard-000002.tar is missing)"),
    ("swap", "1 of 3 shards are not the shards index.json was built from (shard-000002.tar has sample s000000000 at "
             "byte 0, where index.json puts its first sample"),
])
def test_a_deleted_or_swapped_shard_stops_the_run_with_a_plain_message(fixtures_dir, shards, tmp_path, damage,
                                                                         message):
    """A swapped shard is shard-000000.tar's bytes cut to shard-000002.tar's size: its size check passes."""
    import shutil

    copy = tmp_path / "shards"
    shutil.copytree(shards, copy)
    target = copy / "shard-000002.tar"
    if damage == "delete":
        target.unlink()
    else:
        target.write_bytes((copy / "shard-000000.tar").read_bytes()[:target.stat().st_size])
    rc, out = launch_training("srun-env", 2, train_overrides(fixtures_dir, copy, tmp_path / "run"), check=False)
    assert rc == 2 and "Traceback" not in out
    assert out.count(message) == 1  # said once, by rank 0: every rank found the same
    assert "skipped corrupt sample" not in out
    assert not (tmp_path / "run" / "checkpoints").exists()


def _break_samples(shards, copy, rows):
    """A copy of the shard set whose samples ROWS have their codes overwritten: they no longer decode."""
    import shutil

    from higgs_ds.data.shard_index import ShardIndex

    shutil.copytree(shards, copy)
    idx = ShardIndex.load(copy)
    for i in rows:
        path = copy / idx.meta["shards"][int(idx.rows["shard"][i])]["shard"]
        data = bytearray(path.read_bytes())
        off = int(idx.rows["offset"][i])
        data[off + 512: off + 700] = b"\xff" * 188
        path.write_bytes(bytes(data))
    return copy


def test_skipped_samples_are_counted_over_ranks_and_bounded(fixtures_dir, shards, tmp_path):
    """Samples 8 and 10 (shards 1 and 2) do not decode. Under the bound the run finishes and counts every skip of
    every rank in summary.json, the metrics rows and the last log line; over it every rank stops at the same step
    with one plain message, exit 2. No loader workers: every batch read is trained on (workers read ahead, and a
    batch read ahead is not counted until it trains)."""
    import re

    copy = _break_samples(shards, tmp_path / "shards", [8, 10])  # past the 8 samples the collator check reads
    run = tmp_path / "under"
    kv = {"data.val": shards, "data.num_workers": 0}
    _, out = launch_training("torchrun", 2, train_overrides(fixtures_dir, copy, run, **kv))
    logged = len(re.findall(r"skipped corrupt sample \S+/shard-00000[12].tar sample s0000000(08|10)", out))
    rows, _, summary = read_run(run)
    assert logged >= 2 and summary["skipped_samples"] == logged == rows[-1]["skipped_samples"]
    assert f"{logged} unreadable samples skipped" in out.strip().splitlines()[-1]
    over = tmp_path / "over"
    rc, out = launch_training("srun-env", 2, train_overrides(fixtures_dir, copy, over, **{  # each rank's exit code
        **kv, "data.max_skipped_samples": 1}), check=False)
    assert rc == 2 and "Traceback" not in out
    assert len(re.findall(r"error: \d+ samples did not read or decode by step \d+, over data.max_skipped_samples=1",
                          out)) == 1
    assert not (over / "summary.json").exists()


@pytest.mark.parametrize("change, message", [
    ({"audio_num_codebooks": 4}, "holds 8 codebooks a frame (its build.json), but the model {model} reads 4"),
    ({"audio_codebook_size": 100}, "holds codes up to 1023 (build.json codebook_size), but the model {model} has "
                                   "audio_codebook_size 100"),
    ({"text_config": {"vocab_size": 300}}, "has 512 tokens, more than the 300 of the model's text vocabulary"),
])
def test_a_model_that_does_not_fit_the_data_is_refused_before_any_process_group(fixtures_dir, shards, tmp_path,
                                                                                 change, message):
    import shutil

    model = tmp_path / "model"
    shutil.copytree(fixtures_dir / "model", model)
    config = json.loads((model / "config.json").read_text())
    for key, value in change.items():
        config[key] = {**config[key], **value} if isinstance(value, dict) else value
    (model / "config.json").write_text(json.dumps(config))
    overrides = train_overrides(fixtures_dir, shards, tmp_path / "run", **{"model.path": model})
    rc, out = launch_training("srun-env", 2, overrides, check=False, timeout=300)
    assert rc == 2 and "Traceback" not in out and out.count(message.format(model=model)) == 1
    assert "deepspeed_shm_comm" not in out and not (tmp_path / "run").exists()


def test_a_damaged_checkpoint_is_named_and_resume_falls_back_to_the_one_before(fixtures_dir, shards, tmp_path):
    run = tmp_path / "run"
    settings = dict(precision="fp32", save_every=2, keep_last=3, eval_every=0)
    launch_training("torchrun", 2, train_overrides(fixtures_dir, shards, run, steps=6, **settings))
    newest = run / "checkpoints" / "step00000006"
    optim = sorted(newest.glob("*optim_states.pt"))[0]
    size = optim.stat().st_size
    optim.write_bytes(optim.read_bytes()[: size // 2])  # a torn copy, a bad disk block, a quota hit

    rc, out = launch_training("srun-env", 2, train_overrides(fixtures_dir, shards, run, steps=8, resume=newest,
                                                             **settings), check=False)
    assert rc == 2 and "Traceback" not in out
    assert f"cannot resume from {newest}: {optim} has {size // 2} bytes, {size} were written" in out

    _, out = launch_training("torchrun", 2, train_overrides(fixtures_dir, shards, run, steps=8, **settings))
    assert f"checkpoint {newest} is damaged: {optim} has {size // 2} bytes, {size} were written; trying the one " \
           f"before it" in out
    assert f"resumed from {run / 'checkpoints' / 'step00000004'} at step 4" in out
    rows, _, summary = read_run(run)
    assert [r["step"] for r in rows] == list(range(1, 9)) and summary["step"] == 8


def test_a_second_run_into_a_live_run_dir_is_refused_and_a_dead_runs_dir_is_taken_over(fixtures_dir, shards,
                                                                                          tmp_path):
    import os
    import subprocess
    import sys
    import time

    from tests.helpers import REPO, free_port

    run = tmp_path / "run"
    first_env = {**os.environ, "RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                 "MASTER_PORT": str(free_port())}
    first = subprocess.Popen([sys.executable, "higgs_ds/train.py", "--deepspeed", "ds_configs/zero2.json",
                              *train_overrides(fixtures_dir, shards, run, steps=100000)], cwd=REPO, env=first_env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 300
        while not ((run / "metrics.jsonl").exists() and (run / "metrics.jsonl").read_text()):
            assert first.poll() is None and time.time() < deadline, "the first run did not start training"
            time.sleep(1)
        rc, out = launch_training("srun-env", 2, train_overrides(fixtures_dir, shards, run, steps=2), check=False)
        assert rc == 2 and "Traceback" not in out
        assert f"{run} belongs to another run that is still alive" in out and f'"pid": {first.pid}' in out
        assert out.count("belongs to another run") == 1
        # the same port as the live run: refused before any rank reaches (and joins) the live run's process group
        logged = len((run / "metrics.jsonl").read_text().splitlines())
        rc, out = launch_training("srun-env", 2, train_overrides(fixtures_dir, shards, run, steps=2), check=False,
                                  extra_env={"MASTER_PORT": first_env["MASTER_PORT"]})
        assert rc == 2 and out.count("belongs to another run") == 1 and "Traceback" not in out
        deadline = time.time() + 120
        while len((run / "metrics.jsonl").read_text().splitlines()) <= logged + 2:
            assert first.poll() is None and time.time() < deadline, "the live run stopped training"
            time.sleep(1)
    finally:
        os.killpg(first.pid, 9)  # dies as a crashed or preempted job would, lock and all
        first.wait()
    _, out = launch_training("srun-env", 2, train_overrides(fixtures_dir, shards, run, steps=2, resume="never"))
    assert "done: 2 steps" in out
    assert f'"pid": {first.pid}' not in (run / ".lock").read_text()


def test_a_full_disk_at_a_checkpoint_is_named_and_the_run_resumes_once_space_is_free(fixtures_dir, shards,
                                                                                       tmp_path):
    import subprocess

    from tests.helpers import small_disk

    with small_disk(tmp_path / "disk", "4m") as disk:
        run = disk / "run"
        settings = dict(save_every=2, steps=4)
        launch_training("srun-env", 1, train_overrides(fixtures_dir, shards, run, steps=2))  # what a save needs
        used = sum(f.stat().st_size for f in run.rglob("*") if f.is_file())
        subprocess.run(["rm", "-rf", str(run)], check=True)
        filler = disk / "filler"
        free = subprocess.run(["df", "--output=avail", "-B1", str(disk)], capture_output=True, text=True,
                              check=True).stdout.split()[-1]
        filler.write_bytes(bytes(int(free) - used // 2))  # room for the logs, not for a checkpoint
        rc, out = launch_training("srun-env", 1, train_overrides(fixtures_dir, shards, run, **settings), check=False)
        assert rc == 2 and "Traceback" not in out, out[-3000:]
        step_dir = run / "checkpoints" / "step00000002"
        assert f"No space left on device while saving the checkpoint of step 2: {step_dir} (free space there" in out
        assert not step_dir.exists() and not (run / "checkpoints" / "latest").exists()
        filler.unlink()
        _, out = launch_training("srun-env", 1, train_overrides(fixtures_dir, shards, run, **settings))
        assert "done: 4 steps" in out


def test_a_finished_run_started_again_says_it_has_nothing_left(fp32_straight, fixtures_dir, shards):
    """What a second `make demo` does: the same command on a finished run resumes, trains nothing, says so and exits
    0; the metrics and the summary's first and last steps are the run's, not emptied (it used to write first: null
    and the demo failed on it)."""
    rows_before, evals_before, before = read_run(fp32_straight)
    _, out = launch_training("srun-env", 2, train_overrides(fixtures_dir, shards, fp32_straight, precision="fp32"))
    assert "resumed at step 6: the run already has its steps=6, nothing left to train" in out
    rows, evals, summary = read_run(fp32_straight)
    assert (rows, evals) == (rows_before, evals_before)
    assert summary["steps_this_run"] == 0 and summary["step"] == 6
    assert (summary["first"], summary["last"]) == (before["first"], before["last"])
