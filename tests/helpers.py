"""Helpers the tests share: paths, running the CLI and the trainer as a user would, reading a run's output."""

import contextlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

from higgs_ds.fixtures import offline_env

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / ".cache" / "test-fixtures"
# The fixture audio tokenizer loads its semantic model from this HF_HOME; set before transformers is imported.
os.environ.update({**offline_env(FIXTURES), "TOKENIZERS_PARALLELISM": "false"})
os.environ.setdefault("HIGGS_DS_CACHE", str(REPO / ".cache" / "higgs-ds"))  # converted checkpoints: not in ~

CLI = [sys.executable, "-m", "higgs_ds.cli"]
# the product venv (transformers 5: the native classes); native_side.py runs there, also for the oracle tests
NATIVE_PY = REPO / ".venv" / "bin" / "python"
NATIVE_SIDE = REPO / "tests" / "checkpoints" / "native" / "native_side.py"
# the oracle venv: boson_multimodal's model under transformers 4.46 (`make boson-venv`); tests marked `oracle` run in it
BOSON_PY = REPO / ".venv-boson" / "bin" / "python"
BOSON_BACKEND = "tests.oracle.boson_v2:BACKEND"  # model.backend / synthesize --backend of boson's HiggsAudioModel


def run_cli(*args, check=True, env=None, timeout=600, python=None):
    """Run `higgs-ds ARGS` in a subprocess (in the venv of PYTHON, default this session's); returns the
    CompletedProcess (stdout/stderr as text)."""
    cli = CLI if python is None else [str(python), "-m", "higgs_ds.cli"]
    env = {**os.environ, **(env or {}), **({"PYTHONPATH": str(REPO)} if python is not None else {})}
    proc = subprocess.run(cli + [str(a) for a in args], capture_output=True, text=True, cwd=REPO, env=env,
                          timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"higgs-ds {' '.join(map(str, args))} exited {proc.returncode}\n"
                             f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-4000:]}")
    return proc


def require_boson_venv() -> None:
    import pytest

    if not BOSON_PY.is_file():
        if os.environ.get("CI"):
            pytest.fail(f"{BOSON_PY} is missing: `make boson-venv` builds it (make test does)")
        pytest.skip(f"{BOSON_PY} is missing: `make boson-venv` builds it")


def native(*args, timeout=600) -> str:
    """Run a native_side.py command in the product venv (transformers 5), from any test session."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([str(NATIVE_PY), str(NATIVE_SIDE), *map(str, args)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"native_side.py {args[0]} exited {proc.returncode}:\n{proc.stderr[-4000:]}")
    return proc.stdout


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_overrides(fixtures_dir, shards, run_dir, **kv) -> list[str]:
    base = {"run_dir": run_dir, "model.path": fixtures_dir / "model", "model.tokenizer": fixtures_dir / "tokenizer",
            "data.train": shards, "data.val": shards, "data.micro_batch_size": 2, "data.num_workers": 1,
            "steps": 6, "log_every": 1, "save_every": 0, "eval_every": 0, "eval.synth_every": 0, "lora.rank": 4,
            "lora.alpha": 8, "lora.dropout": 0.0, "optim.lr": 3e-3, "optim.warmup_steps": 2, "progress_bar": False}
    base.update(kv)
    return [f"{k}={v}" for k, v in base.items()]


def launch_training(launcher: str, nproc: int, overrides: list[str], ds_config="ds_configs/zero2.json",
                    timeout=900, check=True, extra_env=None, python=None):
    """Run higgs_ds/train.py as the user would: `deepspeed`, `torchrun`, or N plain processes with srun's env; in
    the venv of PYTHON (default this one's; BOSON_PY for the boson backend from the product session)."""
    port = free_port()
    env = {**os.environ, "MASTER_PORT": str(port), **(extra_env or {})}
    env["PYTHONPATH"] = str(REPO)  # the oracle venv, layered by a .pth file, does not see our editable install
    script = ["higgs_ds/train.py", "--deepspeed", ds_config, *overrides]
    python = str(python or sys.executable)
    venv_bin = Path(python).parent
    if launcher == "deepspeed":  # a layered venv (the oracle's) has the launchers of the venv below it only
        cmd = [str(venv_bin / "deepspeed") if (venv_bin / "deepspeed").exists() else python, *(
            [] if (venv_bin / "deepspeed").exists() else ["-m", "deepspeed.launcher.runner"]), "--num_gpus", str(nproc), "--master_port", str(port), *script]
        procs = [subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)]
    elif launcher == "torchrun":
        cmd = [*([str(venv_bin / "torchrun")] if (venv_bin / "torchrun").exists() else
                 [python, "-m", "torch.distributed.run"]), "--nproc_per_node", str(nproc), "--master_port", str(port), *script]
        procs = [subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)]
    elif launcher == "srun-env":  # what srun gives each task: SLURM_PROCID/NTASKS/LOCALID, no RANK
        procs = []
        for r in range(nproc):
            e = {k: v for k, v in env.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
            e.update(SLURM_PROCID=str(r), SLURM_NTASKS=str(nproc), SLURM_LOCALID=str(r), SLURM_JOB_ID="4242",
                     SLURM_JOB_NODELIST="localhost", MASTER_ADDR="127.0.0.1")
            procs.append(subprocess.Popen([python, *script], cwd=REPO, env=e, stdout=subprocess.PIPE,
                                          stderr=subprocess.STDOUT, text=True))
    else:
        raise ValueError(launcher)
    outputs = []
    for p in procs:
        try:
            outputs.append(p.communicate(timeout=timeout)[0])
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
    rc = max(p.returncode for p in procs)
    text = "\n".join(outputs)
    if check and rc != 0:
        raise AssertionError(f"{launcher} training exited {rc}:\n{text[-6000:]}")
    return rc, text


def read_run(run_dir):
    run_dir = Path(run_dir)
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    summary = json.loads((run_dir / "summary.json").read_text())
    return [r for r in rows if r.get("split") is None], [r for r in rows if r.get("split") == "eval"], summary


@contextlib.contextmanager
def small_disk(path: Path, size: str):
    """A tmpfs of SIZE mounted at PATH (root only, as CI runs): a disk that really fills up."""
    import pytest

    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root (CI runs as root)")
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def chromium_args() -> list[str]:
    """Flags for Debian's chromium run headless as root on a machine with no network (nothing phones home)."""
    import pytest
    import shutil

    if shutil.which("chromium") is None:
        pytest.skip("chromium is not installed (make deps installs it as root)")
    return ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync"]
