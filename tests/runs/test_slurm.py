"""On a real SLURM cluster started here (slurmctld, slurmd for two simulated nodes, slurmdbd + MariaDB), with the
tiny fixtures on CPU: sbatch training over 2 nodes, submitit preemption + exact resume, a time limit with requeue,
an array shard build, and a killed rank that ends the job fast. Needs root (daemons, apt); skipped otherwise."""

import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest

from tests.helpers import REPO, launch_training, read_run, train_overrides

pytestmark = [pytest.mark.slurm, pytest.mark.slow]
CLUSTER = REPO / "tests" / "runs" / "cluster.sh"
VENV_BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def cluster():
    if os.geteuid() != 0:
        pytest.skip("the local SLURM cluster needs root (it starts slurmctld/slurmd/slurmdbd and may apt-get install)")
    if shutil.which("apt-get") is None and shutil.which("slurmctld") is None:
        pytest.skip("no SLURM installed and no apt-get to install it")
    subprocess.run(["bash", str(CLUSTER), "start"], check=True, timeout=600)
    yield
    subprocess.run(["bash", str(CLUSTER), "stop"], timeout=120)


@pytest.fixture()
def job_env(fixtures_dir):
    return {**os.environ, "PYTHON": str(VENV_BIN / "python"), "HIGGS_DS": str(VENV_BIN / "higgs-ds"),
            "TOKENIZERS_PARALLELISM": "false"}


SBATCH_CPU = ["--nodes=2", "--ntasks-per-node=1", "--gpus-per-node=1", "--cpus-per-task=1", "--mem=2500"]


def sbatch(args, env, out: Path) -> str:
    proc = subprocess.run(["sbatch", "--parsable", f"--output={out}/%j.out", *map(str, args)], cwd=REPO, env=env,
                          capture_output=True, text=True, check=True)
    return proc.stdout.strip().split(";")[0]


def state(job: str, timeout: float = 60) -> str:
    """The job's final state in accounting (which can lag a moment behind squeue dropping the job)."""
    deadline = time.time() + timeout
    while True:
        out = subprocess.run(["sacct", "-j", job, "-X", "-n", "-o", "State"], capture_output=True, text=True).stdout
        current = out.split()[0] if out.split() else "UNKNOWN"
        if current not in ("UNKNOWN", "PENDING", "RUNNING", "REQUEUED", "COMPLETING") or time.time() > deadline:
            return current
        time.sleep(0.5)


def wait_for(cond, timeout: float, what: str, poll: float = 1.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def in_queue(job: str) -> bool:
    return bool(subprocess.run(["squeue", "-h", "-j", job], capture_output=True, text=True).stdout.strip())


def steps_logged(run: Path) -> int:
    f = run / "metrics.jsonl"
    if not f.exists():
        return 0
    return sum(1 for line in f.read_text().splitlines() if '"split": ' not in line)  # eval and listen rows aside


def test_sbatch_train_two_nodes(cluster, job_env, fixtures_dir, shards, tmp_path):
    run = tmp_path / "run"
    t0 = time.time()
    listen = {"eval.synth_every": 6, "eval.num_prompts": 2, "eval.max_new_tokens": 10}  # one prompt per node
    job = sbatch([*SBATCH_CPU, "--time=10", "slurm/train.sh", "configs/demo.yaml",
                  *train_overrides(fixtures_dir, shards, run, steps=12, save_every=6, **listen)], job_env, tmp_path)
    wait_for(lambda: (run / "metrics.jsonl").exists(), 300, "the first step")
    first_step_s = time.time() - t0
    wait_for(lambda: not in_queue(job), 300, "the job to end")
    log = (tmp_path / f"{job}.out").read_text()
    assert state(job) == "COMPLETED", log[-3000:]
    assert "2 nodes x 1 tasks, master node1:" in log
    rows, _, summary = read_run(run)
    assert [r["step"] for r in rows] == list(range(1, 13)) and len(summary["rank_weight_checksums"]) == 2
    assert (run / "adapter" / "adapter_model.safetensors").is_file()
    listens = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if '"listen"' in x]
    assert [(r["step"], r["prompts"], r["failed"]) for r in listens] == [(6, 2, 0), (12, 2, 0)]
    assert len(list((run / "samples" / "step00000012").glob("*.wav"))) == 2 and (run / "report.html").is_file()
    print(f"\nsubmit -> first step: {first_step_s:.0f} s")


def test_submitit_preemption_resumes_exactly(cluster, job_env, fixtures_dir, v3_shards, tmp_path):
    """On Higgs TTS 3, so that each family crosses the cluster with an interruption: v2 takes the sbatch path's
    time-limit requeue and killed rank below. The launcher does not know the family (only the paths differ)."""
    import submitit

    from launcher.submit import TrainTask

    run, ref = tmp_path / "run", tmp_path / "reference"
    kv = dict(precision="fp32", steps=80, save_every=1000, log_every=10)  # preempted at step 20 or a little later
    kv.update({"model.path": fixtures_dir / "v3_model", "model.tokenizer": fixtures_dir / "v3_model"})
    shards = v3_shards
    executor = submitit.AutoExecutor(folder=tmp_path / "logs")
    executor.update_parameters(nodes=2, tasks_per_node=1, gpus_per_node=1, cpus_per_task=1, mem_gb=2,
                               timeout_min=20, slurm_signal_delay_s=60)
    # the job inherits this environment; torchrun (the reference below) also runs each rank with 1 thread, and a
    # different thread count changes float summation order
    os.environ.update(TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
    job = executor.submit(TrainTask(None, train_overrides(fixtures_dir, shards, run, **kv), "ds_configs/zero2.json"))
    wait_for(lambda: steps_logged(run) >= 20, 300, "20 steps before the preemption")
    t0 = time.time()
    job._interrupt()  # what preemption sends: SIGTERM, then submitit's USR2
    wait_for(lambda: list((run / "checkpoints").glob("step*/COMPLETE")), 120, "the checkpoint at preemption")
    saved = int(next((run / "checkpoints").glob("step*/COMPLETE")).parent.name[4:])
    assert 20 <= saved < 80
    wait_for(lambda: job.state in ("COMPLETED", "FAILED", "CANCELLED"), 600, "the requeued job to finish")
    requeue_to_done_s = time.time() - t0
    assert job.state == "COMPLETED", job.stderr()
    assert job.results()[0]["step"] == 80  # rank 0 returns the summary
    err = job.stderr()
    assert f"resumed from {run}/checkpoints/step{saved:08d} at step {saved}" in err
    # the same config, uninterrupted, launched locally: every loss equal, before and after the resume
    launch_training("torchrun", 2, train_overrides(fixtures_dir, shards, ref, **kv))
    got, _, s_got = read_run(run)
    want, _, s_want = read_run(ref)
    assert [r["step"] for r in got] == list(range(1, 81))
    assert [r["loss"] for r in got] == [r["loss"] for r in want]
    assert s_got["rank_weight_checksums"] == s_want["rank_weight_checksums"]
    print(f"\npreempt -> checkpoint -> requeue -> resume -> done: {requeue_to_done_s:.0f} s")


def job_field(job: str, key: str) -> str:
    out = subprocess.run(["scontrol", "-o", "show", "job", job], capture_output=True, text=True).stdout
    return next((kv.split("=", 1)[1] for kv in out.split() if kv.startswith(f"{key}=")), "")


def test_time_limit_saves_requeues_and_finishes(cluster, job_env, fixtures_dir, shards, tmp_path):
    """SLURM's warning before the time limit (--signal) -> a checkpoint on every rank -> train.sh requeues the job ->
    it resumes -> all steps done. The job starts with a long limit; after 20 steps the test shortens it so that the
    warning is due at once (SLURM checks limits every 30 s), then gives the requeued job its long limit back: exactly
    one requeue, however fast or slow this host is."""
    run, steps = tmp_path / "run", 500
    job = sbatch([*SBATCH_CPU, "--time=30", "--signal=USR1@120", "slurm/train.sh", "configs/demo.yaml",
                  *train_overrides(fixtures_dir, shards, run, steps=steps, save_every=0, log_every=50)], job_env,
                 tmp_path)
    wait_for(lambda: steps_logged(run) >= 20, 300, "20 steps")
    elapsed = time.time() - datetime.fromisoformat(job_field(job, "StartTime")).timestamp()
    # the limit ends 60-120 s from now: the warning (120 s before it) is due now, and the ranks have >= 30 s to save
    subprocess.run(["scontrol", "update", f"JobId={job}", f"TimeLimit={math.ceil((elapsed + 60) / 60)}"], check=True)
    wait_for(lambda: job_field(job, "Restarts") not in ("", "0"), 180, "the requeue after the time-limit warning")
    subprocess.run(["scontrol", "update", f"JobId={job}", "TimeLimit=30"], check=True)
    wait_for(lambda: not in_queue(job), 900, "the requeued job to finish", poll=2)
    log = (tmp_path / f"{job}.out").read_text()
    assert state(job) == "COMPLETED", log[-3000:]
    stops = re.findall(r"stopped by SIGUSR1 at step (\d+); checkpoint saved", log)
    assert len(stops) == 1, log[-3000:]
    saved_step = int(stops[0])
    assert 20 <= saved_step < steps
    assert log.count("requeueing job") == 1 and "restart 1:" in log
    assert f"resumed from {run}/checkpoints/step{saved_step:08d} at step {saved_step}" in log
    rows, _, summary = read_run(run)
    assert [r["step"] for r in rows] == list(range(1, steps + 1)) and summary["stopped_by"] is None


def test_array_build_equals_single_build(cluster, job_env, fixtures_dir, speech, code_cache, shards, tmp_path):
    out = tmp_path / "shards"
    job = sbatch(["--array=0-1", "--gpus=1", "--cpus-per-task=1", "--mem=2500", "--time=10",
                  "slurm/build_shards.sh", "--input", speech / "utterances.jsonl", "--out", out,
                  "--audio-tokenizer", fixtures_dir / "audio_tokenizer", "--text-tokenizer",
                  fixtures_dir / "tokenizer", "--cache-dir", code_cache, "--shard-size", 5], job_env, tmp_path)
    wait_for(lambda: not in_queue(job), 600, "the array job")
    logs = "".join(p.read_text() for p in tmp_path.glob("*.out"))
    assert "part 0/2" in logs and "part 1/2" in logs
    if not (out / "index.json").exists():  # both parts finished at the same moment: join explicitly
        subprocess.run([VENV_BIN / "higgs-ds", "shards", "merge", out], check=True, env=job_env)
    for name in ["index.npz", "rejects.jsonl"] + [p.name for p in shards.glob("shard-*.tar")]:
        assert (out / name).read_bytes() == (shards / name).read_bytes(), name


def _rank_pid(job: str, rank: int) -> int | None:
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            env = (proc / "environ").read_bytes().split(b"\0")
            cmd = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if (f"SLURM_JOB_ID={job}".encode() in env and f"SLURM_PROCID={rank}".encode() in env
                and b"train.py" in cmd and b"srun" not in cmd.split(b"\0")[0]):
            return int(proc.name)
    return None


def test_killed_rank_fails_fast_and_resubmission_resumes(cluster, job_env, fixtures_dir, shards, tmp_path):
    run = tmp_path / "run"
    args = [*SBATCH_CPU, "--time=10", "slurm/train.sh", "configs/demo.yaml"]
    job = sbatch(args + train_overrides(fixtures_dir, shards, run, steps=3000, save_every=10), job_env, tmp_path)
    wait_for(lambda: (run / "checkpoints" / "latest").exists(), 300, "a checkpoint")
    pid = wait_for(lambda: _rank_pid(job, 1), 30, "rank 1's process")
    t0 = time.time()
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not in_queue(job), 90, "the job to end after a rank died", poll=0.5)
    fail_fast_s = time.time() - t0
    assert state(job) == "FAILED"
    assert fail_fast_s < 60
    latest = (run / "checkpoints" / "latest").read_text().strip()
    resumed_at = int(latest[4:])
    job2 = sbatch(args + train_overrides(fixtures_dir, shards, run, steps=resumed_at + 5, save_every=10), job_env,
                  tmp_path)
    wait_for(lambda: not in_queue(job2), 300, "the resubmitted job")
    log = (tmp_path / f"{job2}.out").read_text()
    assert state(job2) == "COMPLETED", log[-3000:]
    assert f"resumed from {run}/checkpoints/{latest} at step {resumed_at}" in log
    print(f"\nrank killed -> job ended: {fail_fast_s:.1f} s")
