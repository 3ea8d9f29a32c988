"""Where checkpoints come from: a local directory, or a hub id downloaded at a pinned revision; the layout check.

A checkpoint is named by a local path or by `REPO_ID[@REVISION]`. A bare hub id of a Higgs-Audio v2 repo gets the
revision pinned below; any other bare id means `main`. Whatever the name, the resolved commit is what gets recorded
(`spec`), so a recorded name downloads exactly the same files again.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

MODEL_REPO = "bosonai/higgs-audio-v2-generation-3B-base"
AUDIO_TOKENIZER_REPO = "bosonai/higgs-audio-v2-tokenizer"
# On 2026-04-04 `main` of both repos moved to the transformers-native layout, which boson_multimodal 0.1.1 cannot
# read; these are the last revisions in boson_multimodal's own layout.
PINNED_REVISIONS = {
    MODEL_REPO: "10840182ca4ad5d9d9113b60b9bb3c1ef1ba3f84",
    AUDIO_TOKENIZER_REPO: "9d4988fbd4ad07b4cac3a5fa462741a41810dbec",
}
# The audio tokenizer loads its semantic model by a hard-coded hub id chosen by `semantic_techer` in its config.
SEMANTIC_MODEL_REPOS = {
    "hubert_base_general": "bosonai/hubert_base",
    "hubert_base": "facebook/hubert-base-ls960",
    "wavlm_base_plus": "microsoft/wavlm-base-plus",
}
KINDS = ("model", "text_tokenizer", "audio_tokenizer", "semantic_model", "asr_model", "speaker_model")
# files worth downloading per kind (a text tokenizer named by a model repo must not pull 11 GB of weights)
_ALLOW = {
    "model": ["*.json", "*.safetensors", "*.txt", "*.model"],
    "text_tokenizer": ["*.json", "*.txt", "*.model", "*.tiktoken"],
    "audio_tokenizer": ["config.json", "model.pth"],
    "semantic_model": ["*.json", "*.safetensors", "*.bin", "*.py"],
    "asr_model": ["*.json", "*.safetensors", "*.txt", "*.model", "*.tiktoken"],
    "speaker_model": ["*.json", "*.safetensors", "*.txt"],
}
_NATIVE_MODEL_TYPES = {"higgs_audio_v2", "higgs_audio_v2_tokenizer"}


class CheckpointError(ValueError):
    """A checkpoint cannot be used: the message names it, says what was found and what to do."""


@dataclass(frozen=True)
class Checkpoint:
    kind: str
    path: Path  # a local directory holding the files
    repo_id: str | None = None  # the hub id it was downloaded from (None: a local directory)
    commit: str | None = None  # the hub commit of those files

    @property
    def spec(self) -> str:
        """The name to record: `REPO_ID@COMMIT` for hub checkpoints, the directory otherwise."""
        if self.repo_id:
            return f"{self.repo_id}@{self.commit}" if self.commit else self.repo_id
        return str(self.path)

    def to_json(self) -> dict:
        return {"spec": self.spec, "repo_id": self.repo_id, "commit": self.commit, "path": str(self.path)}


def parse_spec(spec: str) -> tuple[str | None, str | None]:
    """(repo_id, revision) of a hub name, or (None, None) for an existing local path."""
    if os.path.exists(spec) or spec.startswith((".", "/", "~")):
        return None, None
    repo_id, _, revision = spec.partition("@")
    if not repo_id or repo_id.count("/") > 1 or not revision and "@" in spec:
        raise CheckpointError(f"{spec!r} is neither an existing directory nor a hub id (ORG/NAME or ORG/NAME@REVISION)")
    return repo_id, revision or PINNED_REVISIONS.get(repo_id, "main")


def resolve(spec: str, kind: str) -> Checkpoint:
    """A local directory for SPEC, downloading a hub id at its revision; raises CheckpointError for a wrong layout
    (checked on config.json before the weights are downloaded)."""
    if kind not in KINDS:
        raise ValueError(f"unknown checkpoint kind {kind!r}")
    repo_id, revision = parse_spec(spec)
    if repo_id is None:
        path = Path(spec).expanduser()
        if not path.is_dir():
            raise CheckpointError(f"{kind.replace('_', ' ')} {spec}: no such directory")
        check_layout(path, kind, str(path))
        return Checkpoint(kind, path.resolve())
    where = f"{repo_id}@{revision}"
    from huggingface_hub import hf_hub_download, snapshot_download

    try:
        if kind in ("model", "audio_tokenizer"):  # the layout is known from config.json alone: check it first
            config = Path(hf_hub_download(repo_id, "config.json", revision=revision))
            check_config(_read_json(config), kind, where)
        path = Path(snapshot_download(repo_id, revision=revision, allow_patterns=_ALLOW[kind]))
    except (OSError, ValueError) as e:
        if isinstance(e, CheckpointError):
            raise
        local = "" if "@" in spec else f" (no directory {spec} exists here either)"
        raise CheckpointError(f"could not get the {kind.replace('_', ' ')} {where} from the hub{local}: {e}. "
                              f"Without hub access, stage it on a machine that has access and pass its local "
                              f"directory (README: Which checkpoints)") from None
    check_layout(path, kind, where)
    commit = path.name if path.parent.name == "snapshots" else None  # the hub cache keeps snapshots/<commit>/
    return Checkpoint(kind, path, repo_id, commit)


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not readable JSON ({e})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return data


def check_layout(path: Path, kind: str, where: str) -> None:
    """The files a kind needs are there, in boson_multimodal's layout."""
    config = path / "config.json"
    if kind == "text_tokenizer":
        if config.is_file():
            check_config(_read_json(config), "model", where)
        if not any((path / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json")):
            raise CheckpointError(f"text tokenizer {where}: no tokenizer.json or tokenizer_config.json in {path}")
        return
    if not config.is_file():
        raise CheckpointError(f"{kind.replace('_', ' ')} {where}: no config.json in {path}")
    check_config(_read_json(config), kind, where)
    if kind == "audio_tokenizer" and not (path / "model.pth").is_file():
        raise CheckpointError(f"audio tokenizer {where}: no model.pth in {path} (boson_multimodal's layout is "
                              f"config.json + model.pth)")
    if kind == "model" and not any(path.glob("*.safetensors")) and not any(path.glob("*.bin")):
        raise CheckpointError(f"model {where}: no weights (*.safetensors) in {path}")


def check_config(config: dict, kind: str, where: str) -> None:
    model_type = config.get("model_type")
    native = model_type in _NATIVE_MODEL_TYPES or "acoustic_model_config" in config or \
        "semantic_model_config" in config
    if native and kind in ("model", "audio_tokenizer"):
        raise CheckpointError(native_layout_message(kind, where, model_type or "acoustic/semantic_model_config"))
    if kind == "model" and model_type != "higgs_audio":
        raise CheckpointError(f"model {where}: config.json has model_type {model_type!r}, not a Higgs-Audio model "
                              f"(boson_multimodal's is 'higgs_audio')")
    if kind == "audio_tokenizer" and not {"n_q", "bins", "sample_rate"} <= set(config):
        raise CheckpointError(f"audio tokenizer {where}: config.json lacks n_q/bins/sample_rate; not a Higgs audio "
                              f"tokenizer in boson_multimodal's layout")


def native_layout_message(kind: str, where: str, found: str) -> str:
    repo = MODEL_REPO if kind == "model" else AUDIO_TOKENIZER_REPO
    layout = ("config.json with model_type 'higgs_audio' + model-*.safetensors + tokenizer files" if kind == "model"
              else "config.json with n_q/bins/semantic_techer + model.pth")
    return (f"{kind.replace('_', ' ')} {where} is in the transformers-native layout ({found}), which Boson published "
            f"on 2026-04-04 for transformers >= 5.3. boson_multimodal 0.1.1, which higgs-ds trains with, reads only "
            f"its own layout. Use either\n"
            f"  - the last revision in that layout: {repo}@{PINNED_REVISIONS[repo]} (what a bare {repo} means), or\n"
            f"  - a local directory in boson_multimodal's layout ({layout}).")


def semantic_model_repo(audio_tokenizer: Checkpoint) -> str | None:
    """The hub id the audio tokenizer loads its semantic model from (None: it loads none by hub id)."""
    config = _read_json(audio_tokenizer.path / "config.json")
    return SEMANTIC_MODEL_REPOS.get(config.get("semantic_techer", ""))


@contextlib.contextmanager
def semantic_model_at(repo_id: str | None, semantic: Checkpoint | None):
    """While inside, `from_pretrained(repo_id)` loads SEMANTIC's directory: transformers takes a name that exists
    as a relative directory for a local path, so a temporary working directory holds `repo_id` as a link to it.
    Only for the single-threaded moment the audio tokenizer is built: the working directory is process-wide."""
    if repo_id is None or semantic is None:
        yield
        return
    old = os.getcwd()
    with tempfile.TemporaryDirectory(prefix="higgs-ds-semantic-") as tmp:
        link = Path(tmp) / repo_id
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(semantic.path.resolve(), target_is_directory=True)
        os.chdir(tmp)
        try:
            yield
        finally:
            os.chdir(old)
