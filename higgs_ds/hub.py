"""Where checkpoints come from: a local directory, or a hub id downloaded at a pinned revision; which layout it is in.

A checkpoint is named by a local path or by `REPO_ID[@REVISION]`. A bare hub id of a Higgs-Audio v2 repo gets the
revision pinned below; any other bare id means `main`. Whatever the name, the resolved commit is what gets recorded
(`spec`), so a recorded name downloads exactly the same files again. A model or audio tokenizer in the
transformers-native layout is used through its boson-layout copy (layouts.py): `path` is that copy, `origin` what was
named.
"""

from __future__ import annotations

import contextlib
import dataclasses
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
    "model": ["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja"],
    "text_tokenizer": ["*.json", "*.txt", "*.model", "*.tiktoken", "*.jinja"],
    "audio_tokenizer": ["config.json", "model.pth"],
    "native_audio_tokenizer": ["*.json", "*.safetensors"],
    "semantic_model": ["*.json", "*.safetensors", "*.bin", "*.py"],
    "asr_model": ["*.json", "*.safetensors", "*.txt", "*.model", "*.tiktoken"],
    "speaker_model": ["*.json", "*.safetensors", "*.txt"],
}
NATIVE_MODEL_TYPE, NATIVE_TOKENIZER_TYPE = "higgs_audio_v2", "higgs_audio_v2_tokenizer"


class CheckpointError(ValueError):
    """A checkpoint cannot be used: the message names it, says what was found and what to do."""


@dataclass(frozen=True)
class Checkpoint:
    kind: str
    path: Path  # a local directory holding the files
    repo_id: str | None = None  # the hub id it was downloaded from (None: a local directory)
    commit: str | None = None  # the hub commit of those files
    layout: str = "boson"  # the layout of what was named: "boson", or "native" (then `path` is its converted copy)
    origin: Path | None = None  # the directory that was named or downloaded, when `path` is a converted copy

    @property
    def spec(self) -> str:
        """The name to record: `REPO_ID@COMMIT` for hub checkpoints, the directory named otherwise."""
        if self.repo_id:
            return f"{self.repo_id}@{self.commit}" if self.commit else self.repo_id
        return str(self.origin or self.path)

    @property
    def converted(self) -> bool:
        return self.layout == "native"

    def to_json(self) -> dict:
        out = {"spec": self.spec, "repo_id": self.repo_id, "commit": self.commit, "path": str(self.path),
               "layout": self.layout}
        if self.converted:
            out["converted_from"] = str(self.origin)
        return out

    def describe(self) -> str:
        """SPEC, and for a native checkpoint that it was converted (for logs and export messages)."""
        return f"{self.spec} (transformers-native layout, converted to boson_multimodal's in {self.path})" \
            if self.converted else self.spec


def parse_spec(spec: str) -> tuple[str | None, str | None]:
    """(repo_id, revision) of a hub name, or (None, None) for an existing local path."""
    if os.path.exists(spec) or spec.startswith((".", "/", "~")):
        return None, None
    repo_id, _, revision = spec.partition("@")
    if not repo_id or repo_id.count("/") > 1 or not revision and "@" in spec:
        raise CheckpointError(f"{spec!r} is neither an existing directory nor a hub id (ORG/NAME or ORG/NAME@REVISION)")
    return repo_id, revision or PINNED_REVISIONS.get(repo_id, "main")


def resolve(spec: str, kind: str) -> Checkpoint:
    """A local directory for SPEC in boson_multimodal's layout, downloading a hub id at its revision and converting a
    native checkpoint (once); raises CheckpointError for a checkpoint in neither layout (checked on config.json
    before the weights are downloaded)."""
    if kind not in KINDS:
        raise ValueError(f"unknown checkpoint kind {kind!r}")
    repo_id, revision = parse_spec(spec)
    if repo_id is None:
        path = Path(spec).expanduser()
        if not path.is_dir():
            raise CheckpointError(f"{kind.replace('_', ' ')} {spec}: no such directory")
        layout = check_layout(path, kind, str(path))
        return _in_boson_layout(Checkpoint(kind, path.resolve()), layout)
    where = f"{repo_id}@{revision}"
    from huggingface_hub import hf_hub_download, snapshot_download

    try:
        allow = _ALLOW[kind]
        if kind in ("model", "audio_tokenizer"):  # the layout is known from config.json alone: check it first
            config = Path(hf_hub_download(repo_id, "config.json", revision=revision))
            if check_config(read_json(config), kind, where) == "native" and kind == "audio_tokenizer":
                allow = _ALLOW["native_audio_tokenizer"]
        path = Path(snapshot_download(repo_id, revision=revision, allow_patterns=allow))
    except (OSError, ValueError) as e:
        if isinstance(e, CheckpointError):
            raise
        local = "" if "@" in spec else f" (no directory {spec} exists here either)"
        raise CheckpointError(f"could not get the {kind.replace('_', ' ')} {where} from the hub{local}: {e}. "
                              f"Without hub access, stage it on a machine that has access and pass its local "
                              f"directory (README: Which checkpoints)") from None
    layout = check_layout(path, kind, where)
    commit = path.name if path.parent.name == "snapshots" else None  # the hub cache keeps snapshots/<commit>/
    return _in_boson_layout(Checkpoint(kind, path, repo_id, commit), layout)


def _in_boson_layout(checkpoint: Checkpoint, layout: str) -> Checkpoint:
    if layout == "boson" or checkpoint.kind not in ("model", "text_tokenizer", "audio_tokenizer"):
        return checkpoint
    from higgs_ds.layouts import to_boson

    out = to_boson(checkpoint.kind, checkpoint.path, checkpoint.spec, checkpoint.repo_id, checkpoint.commit)
    return dataclasses.replace(checkpoint, path=out, layout="native", origin=checkpoint.path)


def read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not readable JSON ({e})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return data


def check_layout(path: Path, kind: str, where: str) -> str:
    """The layout of the checkpoint in PATH ("boson" or "native"), having checked that the files its kind needs in
    that layout are there."""
    config = path / "config.json"
    if kind == "text_tokenizer":
        layout = check_config(read_json(config), "model", where) if config.is_file() else "boson"
        if not any((path / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json")):
            raise CheckpointError(f"text tokenizer {where}: no tokenizer.json or tokenizer_config.json in {path}")
        return layout
    if not config.is_file():
        raise CheckpointError(f"{kind.replace('_', ' ')} {where}: no config.json in {path}")
    layout = check_config(read_json(config), kind, where)
    if kind == "audio_tokenizer" and layout == "boson" and not (path / "model.pth").is_file():
        raise CheckpointError(f"audio tokenizer {where}: no model.pth in {path} (boson_multimodal's layout is "
                              f"config.json + model.pth)")
    if kind in ("model", "audio_tokenizer") and layout == "native" and not any(path.glob("*.safetensors")):
        raise CheckpointError(f"{kind.replace('_', ' ')} {where}: config.json is in the transformers-native layout "
                              f"but {path} holds no *.safetensors weights")
    if kind == "model" and not any(path.glob("*.safetensors")) and not any(path.glob("*.bin")):
        raise CheckpointError(f"model {where}: no weights (*.safetensors) in {path}")
    if kind == "model" and layout == "native" and not (path / "tokenizer.json").is_file():
        raise CheckpointError(f"model {where}: no tokenizer.json in {path}; a native checkpoint is converted with "
                              f"the ids of its text tokenizer's audio tokens (the hub's checkpoints ship it)")
    return layout


def check_config(config: dict, kind: str, where: str) -> str:
    """"boson" or "native" for a config.json of KIND; CheckpointError for one in neither layout."""
    model_type = config.get("model_type")
    if kind == "model":
        if model_type == NATIVE_MODEL_TYPE:
            return "native"
        if model_type != "higgs_audio":
            raise CheckpointError(f"model {where}: config.json has model_type {model_type!r}: not a Higgs-Audio model "
                                  f"in boson_multimodal's layout ('higgs_audio') nor in the transformers-native one "
                                  f"({NATIVE_MODEL_TYPE!r})")
        return "boson"
    if kind == "audio_tokenizer":
        if model_type == NATIVE_TOKENIZER_TYPE or "acoustic_model_config" in config:
            return "native"
        if not {"n_q", "bins", "sample_rate"} <= set(config):
            raise CheckpointError(f"audio tokenizer {where}: config.json has neither n_q/bins/sample_rate "
                                  f"(boson_multimodal's layout) nor model_type {NATIVE_TOKENIZER_TYPE!r} "
                                  f"(transformers-native): not a Higgs audio tokenizer")
        return "boson"
    return "boson"


def semantic_model_repo(audio_tokenizer: Checkpoint) -> str | None:
    """The hub id the audio tokenizer loads its semantic model from (None: it loads none by hub id)."""
    config = read_json(audio_tokenizer.path / "config.json")
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
