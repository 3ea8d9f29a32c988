"""Session fixtures: the tiny Higgs stack, espeak-ng speech, a code cache and a shard set, built once per session."""

from pathlib import Path

import pytest

from higgs_ds.fixtures import ensure_fixtures
from tests.helpers import FIXTURES, NATIVE_PY, run_cli


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    from higgs_ds.fixtures import fixtures_current

    if not fixtures_current(FIXTURES):
        import importlib.util

        if importlib.util.find_spec("transformers.models.higgs_audio_v2") is None:
            import shutil  # the oracle venv: the fixtures are built by transformers' class, in the product venv

            shutil.rmtree(FIXTURES, ignore_errors=True)
            run_cli("fixtures", "--out", FIXTURES, python=NATIVE_PY)
    return ensure_fixtures(FIXTURES)


@pytest.fixture(scope="session")
def speech(tmp_path_factory) -> Path:
    from higgs_ds.data.sample_data import make_sample_data

    out = tmp_path_factory.mktemp("speech")
    make_sample_data(out, speakers=3, utterances=4)
    return out


@pytest.fixture(scope="session")
def code_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("code-cache")


def build_shards(out: Path, speech: Path, fixtures_dir: Path, text_tokenizer: str, code_cache: Path) -> Path:
    run_cli("shards", "build", "--input", speech / "utterances.jsonl", "--out", out, "--audio-tokenizer",
            fixtures_dir / "audio_tokenizer", "--text-tokenizer", fixtures_dir / text_tokenizer, "--shard-size", 5,
            "--cache-dir", code_cache)
    return out


@pytest.fixture(scope="session")
def shards(fixtures_dir, speech, code_cache, tmp_path_factory) -> Path:
    """12 utterances of 3 espeak-ng speakers paired into cloning records, 5 records a shard (uneven: 5, 5, 2)."""
    return build_shards(tmp_path_factory.mktemp("shards"), speech, fixtures_dir, "tokenizer", code_cache)


@pytest.fixture(scope="session")
def v3_shards(fixtures_dir, speech, code_cache, tmp_path_factory) -> Path:
    """The same 12 records built for the tiny Higgs TTS 3 model (its text tokenizer: the v3 prompt), 5 a shard."""
    return build_shards(tmp_path_factory.mktemp("v3-shards"), speech, fixtures_dir, "v3_model", code_cache)


@pytest.fixture(scope="module")
def native_model(fixtures_dir, shards):
    """(model config, the tiny fp32 model on transformers' class, a reader over the session's shards with its
    collator), fresh for each test module."""
    from higgs_ds.checkpoints.model import load_tokenizer
    from higgs_ds.config import DataConfig, ModelConfig
    from higgs_ds.data.loader import BatchReader
    from higgs_ds.data.shard_index import ShardIndex
    from higgs_ds.models import backend_for

    mcfg = ModelConfig(path=str(fixtures_dir / "model"), tokenizer=str(fixtures_dir / "tokenizer"))
    backend = backend_for("native")
    model = backend.load(mcfg)
    collator = backend.make_collator(model.config, mcfg, DataConfig())
    return mcfg, model, BatchReader(ShardIndex.load(shards), load_tokenizer(mcfg), collator)


@pytest.fixture(scope="module")
def tiny_model(fixtures_dir, shards):
    """(model config, the tiny fp32 model on boson_multimodal's class, a reader over the session's shards), fresh
    for each test module: the oracle tests' (transformers 4.46)."""
    from higgs_ds.checkpoints.model import load_tokenizer
    from higgs_ds.config import ModelConfig
    from higgs_ds.data.loader import BatchReader
    from higgs_ds.data.shard_index import ShardIndex
    from tests.oracle.boson_v2 import load_model, make_collator

    mcfg = ModelConfig(path=str(fixtures_dir / "model"), tokenizer=str(fixtures_dir / "tokenizer"))
    model = load_model(mcfg)
    return mcfg, model, BatchReader(ShardIndex.load(shards), load_tokenizer(mcfg), make_collator(model.config))
