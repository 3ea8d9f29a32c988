"""bench/gpu_check.sh end to end on CPU, as a lent GPU machine would run it: an interpreter whose site holds only torch
and torchaudio, the rest installed from the wheelhouse with the package index unreachable, then the smoke (train,
resume, export) and bench.gpu on each family's tiny model. `make test` builds the wheelhouse for this machine's
Python into .cache/wheelhouse-test (`make wheelhouse` builds the GPU machines' one)."""

import importlib.metadata as md
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO

WHEELHOUSE = REPO / ".cache" / "wheelhouse-test"


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def torch_only_python(where: Path) -> Path:
    """A venv whose site-packages links only torch, torchaudio and their own requirements from ours: the interpreter
    a lent GPU machine comes with."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(where)], check=True)
    python = where / "bin" / "python"
    site = Path(subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    todo, seen = ["torch", "torchaudio"], set()
    while todo:
        name = canonical(todo.pop())
        if name in seen:
            continue
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            continue  # an optional requirement we do not have
        seen.add(name)
        todo += [re.split(r"[ ;<>=!~\[(]", r, maxsplit=1)[0] for r in dist.requires or [] if "extra ==" not in r]
        for top in {Path(str(f)).parts[0] for f in dist.files or [] if not str(f).startswith("..")}:
            source = Path(dist.locate_file(top))
            if source.exists() and top not in ("bin", "__pycache__") and not (site / top).exists():
                (site / top).symlink_to(source)
    return python


@pytest.fixture(scope="module")
def wheelhouse():
    if not (WHEELHOUSE / "wheelhouse.json").exists():
        pytest.fail(f"{WHEELHOUSE} is missing: `make test` builds it (or run `make test-wheelhouse`)")
    return WHEELHOUSE


def test_the_wheelhouse_holds_no_torch_side_wheel_and_fits_beside_the_checkout(wheelhouse):
    meta = json.loads((wheelhouse / "wheelhouse.json").read_text())
    names = {canonical(w.split("-")[0]) for w in meta["wheels"]}
    assert not names & {"torch", "torchaudio", "triton"} and not any(n.startswith("nvidia") for n in names)
    assert {"transformers", "peft", "deepspeed", "webdataset", "boson-multimodal"} <= names
    pins = dict(line.split("==") for line in (wheelhouse / "requirements.txt").read_text().split())
    assert pins["transformers"] == md.version("transformers") and pins["deepspeed"] == md.version("deepspeed")
    assert set(pins) == names  # every pin has its wheel and nothing else came along
    on_disk = sum(f.stat().st_size for f in wheelhouse.rglob("*") if f.is_file() and f.name != "wheelhouse.json")
    assert meta["bytes"] == on_disk <= 60 * 2**20


@pytest.mark.slow
def test_gpu_check_runs_offline_from_the_wheelhouse_on_cpu(wheelhouse, tmp_path):
    python = torch_only_python(tmp_path / "torch-only")
    bare = subprocess.run([python, "-c", "import torch, importlib.util as u; print(torch.__version__, "
                           "u.find_spec('transformers') is None, u.find_spec('deepspeed') is None)"],
                          capture_output=True, text=True, check=True).stdout.split()
    assert bare[0].startswith("2.11") and bare[1:] == ["True", "True"]

    venv, out = tmp_path / "check-venv", tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV", "PIP_"))}
    env.update(PYTHON=str(python), WHEELHOUSE=str(wheelhouse), VENV=str(venv),
               PIP_INDEX_URL="http://127.0.0.1:9/simple", PIP_NO_CACHE_DIR="1")  # nothing can be fetched
    env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if not p.startswith(sys.prefix))
    proc = subprocess.run(["bash", REPO / "bench" / "gpu_check.sh", "--device", "cpu", "--out", out], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert re.search(r"installed \d+ packages from ", proc.stdout)

    where = subprocess.run([venv / "bin" / "python", "-c", "import transformers, deepspeed, torch; "
                            "print(transformers.__version__, transformers.__file__, torch.__file__)"],
                           capture_output=True, text=True, check=True).stdout.splitlines()[-1].split()
    assert where[0] == md.version("transformers") and where[1].startswith(str(venv))
    assert not where[2].startswith(str(venv))  # the machine's torch, not a copy

    result = json.loads((out / "gpu_check.json").read_text())
    assert result["errors"] == {} and result["size"] == "tiny" and result["torch"].startswith("2.11")
    assert result["families"] == ["v2", "v3"]
    for family in ("v2", "v3"):
        smoke = result[family]["smoke"]
        assert smoke["steps"] == 3 and all(math.isfinite(x) and 5 < x < 20 for x in smoke["losses"]), smoke
        assert smoke["adapter_bytes"] > 10_000
        cases = result[family]["bench"]["cases"]
        assert {c["activation_checkpointing"] for c in cases} == {False, True}
        assert all(c["ok"] and c["seq_len"] == 128 and c["tokens_per_s"] > 0 and c["flops_per_token"] > 0
                   for c in cases)
        assert all(0 < c["peak_host_rss_gb"] < 8 for c in cases)  # measured in each case's own process
        # the memory model's peak beside the measured one (a GPU's max_memory_allocated; none on the CPU)
        assert all(c["traced_peak_gb"] > 0.5 for c in cases)  # DeepSpeed's two bf16 buckets of 2e8: 0.75 GiB
    assert "GPU check on cpu (tiny)" in proc.stdout and " Higgs TTS 3:" in proc.stdout and "losses" in proc.stdout
