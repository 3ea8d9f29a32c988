"""Shared fixtures: the tiny Higgs stack, espeak-ng speech, a code cache and a shard set, built once per session."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / ".cache" / "test-fixtures"
# The fixture audio tokenizer loads its semantic model from this HF_HOME; set before transformers is imported.
os.environ.update({"HF_HOME": str(FIXTURES / "hf_home"), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                   "TOKENIZERS_PARALLELISM": "false"})

CLI = [sys.executable, "-m", "higgs_ds.cli"]


def run_cli(*args, check=True, env=None, timeout=600):
    """Run `higgs-ds ARGS` in a subprocess; returns the CompletedProcess (stdout/stderr as text)."""
    proc = subprocess.run(CLI + [str(a) for a in args], capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, **(env or {})}, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"higgs-ds {' '.join(map(str, args))} exited {proc.returncode}\n"
                             f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-4000:]}")
    return proc


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    import json

    from higgs_ds.fixtures import FIXTURES_VERSION, build_fixtures

    stamp = FIXTURES / "FIXTURES.json"
    if not stamp.is_file() or json.loads(stamp.read_text()).get("version") != FIXTURES_VERSION:
        shutil.rmtree(FIXTURES, ignore_errors=True)
        build_fixtures(FIXTURES)
    return FIXTURES


@pytest.fixture(scope="session")
def speech(tmp_path_factory) -> Path:
    from higgs_ds.sample_data import make_sample_data

    out = tmp_path_factory.mktemp("speech")
    make_sample_data(out, speakers=3, utterances=4)
    return out


@pytest.fixture(scope="session")
def code_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("code-cache")


@pytest.fixture(scope="session")
def shards(fixtures_dir, speech, code_cache, tmp_path_factory) -> Path:
    """12 utterances of 3 espeak-ng speakers paired into cloning records, 5 records a shard (uneven: 5, 5, 2)."""
    out = tmp_path_factory.mktemp("shards")
    run_cli("shards", "build", "--input", speech / "utterances.jsonl", "--out", out, "--audio-tokenizer",
            fixtures_dir / "audio_tokenizer", "--text-tokenizer", fixtures_dir / "tokenizer", "--shard-size", 5,
            "--cache-dir", code_cache)
    return out
