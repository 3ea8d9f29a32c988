"""Where checkpoints come from: a local directory, or a hub id downloaded at a pinned revision; which layout it is in.

A checkpoint is named by a local path or by `REPO_ID[@REVISION]`. A bare hub id of a Higgs-Audio v2 repo gets the
revision pinned below; any other bare id means `main`. Whatever the name, the resolved commit is what gets recorded
(`spec`), so a recorded name downloads exactly the same files again. A model or audio tokenizer in the
transformers-native layout is used through its boson-layout copy (layouts.py): `path` is that copy, `origin` what was
named.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from higgs_ds.checkpoints.checkpoint_dir import (Checkpoint, CheckpointError, check_config, check_layout, read_json,
                                                 semantic_model_repo)

MODEL_REPO = "bosonai/higgs-audio-v2-generation-3B-base"
AUDIO_TOKENIZER_REPO = "bosonai/higgs-audio-v2-tokenizer"
# On 2026-04-04 `main` of both repos moved to the transformers-native layout, which boson_multimodal 0.1.1 cannot
# read; these are the last revisions in boson_multimodal's own layout.
PINNED_REVISIONS = {
    MODEL_REPO: "10840182ca4ad5d9d9113b60b9bb3c1ef1ba3f84",
    AUDIO_TOKENIZER_REPO: "9d4988fbd4ad07b4cac3a5fa462741a41810dbec",
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
    return _in_boson_layout(*locate(spec, kind))


def resolve_native_model(spec: str, tokenizer: str | None = None) -> Checkpoint:
    """A local directory for the model SPEC in the transformers-native layout: a native checkpoint as it is, a
    boson-layout one converted once (with the text tokenizer TOKENIZER, default SPEC's own)."""
    checkpoint, layout = locate(spec, "model")
    if layout == "native":
        return dataclasses.replace(checkpoint, layout="native", origin=checkpoint.path)
    if layout == "tts3":
        raise CheckpointError(f"model {spec}: a Higgs TTS 3 checkpoint, not Higgs-Audio v2")
    from higgs_ds.checkpoints.layouts import to_native

    tokenizer_dir = _in_boson_layout(*locate(tokenizer or spec, "text_tokenizer")).path
    out = to_native(checkpoint.path, checkpoint.spec, tokenizer_dir, checkpoint.repo_id, checkpoint.commit)
    return dataclasses.replace(checkpoint, path=out, origin=checkpoint.path)


def locate(spec: str, kind: str) -> tuple[Checkpoint, str]:
    """(the checkpoint SPEC names, downloaded if it is a hub id, and its layout), nothing converted."""
    if kind not in KINDS:
        raise ValueError(f"unknown checkpoint kind {kind!r}")
    repo_id, revision = parse_spec(spec)
    if repo_id is None:
        path = Path(spec).expanduser()
        if not path.is_dir():
            raise CheckpointError(f"{kind.replace('_', ' ')} {spec}: no such directory")
        return Checkpoint(kind, path.resolve()), check_layout(path, kind, str(path))
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
    return Checkpoint(kind, path, repo_id, commit), layout


def _in_boson_layout(checkpoint: Checkpoint, layout: str) -> Checkpoint:
    """A native v2 checkpoint's boson-layout copy; anything else as it is (Higgs TTS 3 is read in its own layout)."""
    if layout != "native" or checkpoint.kind not in ("model", "text_tokenizer", "audio_tokenizer"):
        return checkpoint
    from higgs_ds.checkpoints.layouts import to_boson

    out = to_boson(checkpoint.kind, checkpoint.path, checkpoint.spec, checkpoint.repo_id, checkpoint.commit)
    return dataclasses.replace(checkpoint, path=out, layout="native", origin=checkpoint.path)


def resolve_audio_tokenizer(name_or_path: str,
                            semantic_model: str | None = None) -> tuple[Checkpoint, Checkpoint | None]:
    """The audio tokenizer's checkpoint and that of the semantic model it loads (by default the hub id its config
    names; SEMANTIC_MODEL, a directory or hub id, replaces it)."""
    tokenizer = resolve(name_or_path, "audio_tokenizer")
    repo = semantic_model_repo(tokenizer)
    if repo is None:
        return tokenizer, None
    if semantic_model is None and tokenizer.converted:  # a native tokenizer holds its HuBERT: converted beside it
        from higgs_ds.checkpoints.native_codec import SEMANTIC_DIR

        return tokenizer, dataclasses.replace(tokenizer, kind="semantic_model", path=tokenizer.path / SEMANTIC_DIR)
    return tokenizer, resolve(semantic_model or repo, "semantic_model")
