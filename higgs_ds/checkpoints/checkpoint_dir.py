"""What a checkpoint directory is: the Checkpoint record of where it came from, the layout its config.json is in
(Higgs-Audio v2 in boson_multimodal's layout or the transformers-native one; "tts3" for a Higgs TTS 3 checkpoint),
and the semantic model an audio tokenizer loads by hub id."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

NATIVE_MODEL_TYPE, NATIVE_TOKENIZER_TYPE = "higgs_audio_v2", "higgs_audio_v2_tokenizer"
TTS3_MODEL_TYPE = "higgs_multimodal_qwen3"  # Higgs TTS 3: its own family (models/higgs_v3), read as it is
# The audio tokenizer loads its semantic model by a hard-coded hub id chosen by `semantic_techer` in its config.
SEMANTIC_MODEL_REPOS = {
    "hubert_base_general": "bosonai/hubert_base",
    "hubert_base": "facebook/hubert-base-ls960",
    "wavlm_base_plus": "microsoft/wavlm-base-plus",
}


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


def read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not readable JSON ({e})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return data


def check_layout(path: Path, kind: str, where: str) -> str:
    """The layout of the checkpoint in PATH ("boson", "native" or "tts3"), having checked that the files its kind needs in
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
    if kind in ("model", "audio_tokenizer") and layout in ("native", "tts3") and not any(path.glob("*.safetensors")):
        raise CheckpointError(f"{kind.replace('_', ' ')} {where}: config.json is in the {layout} layout "
                              f"but {path} holds no *.safetensors weights")
    if kind == "model" and not any(path.glob("*.safetensors")) and not any(path.glob("*.bin")):
        raise CheckpointError(f"model {where}: no weights (*.safetensors) in {path}")
    return layout


def check_config(config: dict, kind: str, where: str) -> str:
    """"boson", "native" or "tts3" for a config.json of KIND; CheckpointError for one in no layout we read."""
    model_type = config.get("model_type")
    if kind == "model":
        if model_type == NATIVE_MODEL_TYPE:
            return "native"
        if model_type == TTS3_MODEL_TYPE:
            return "tts3"
        if model_type != "higgs_audio":
            raise CheckpointError(f"model {where}: config.json has model_type {model_type!r}: not a Higgs-Audio v2 "
                                  f"model in boson_multimodal's layout ('higgs_audio') or the transformers-native one "
                                  f"({NATIVE_MODEL_TYPE!r}), nor Higgs TTS 3 ({TTS3_MODEL_TYPE!r})")
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
