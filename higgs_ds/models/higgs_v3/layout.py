"""Higgs TTS 3's native checkpoint layout (what the hub serves and mlx-audio, vLLM-Omni and sglang-omni read) to our
module names and back: the key map, the tied copies checked, the bundled codec's weights kept aside."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from higgs_ds.checkpoints.checkpoint_dir import CheckpointError
from higgs_ds.models.higgs_v3.model import HiggsTTS3, empty_model

# checkpoint prefix -> our prefix
KEY_MAP = {
    "tied.embedding.text_embedding.": "body.embed_tokens.",
    "body.layers.": "body.layers.",
    "body.norm.": "body.norm.",
    "tied.embedding.modality_embeddings.0.embedding.": "audio_embedding.",
}
CODEC_PREFIX = "tied.embedding.modality_embeddings.0.model."
# tied copies the checkpoint also stores: key -> the key it must equal
TIED = {"tied.head.text_head.weight": "tied.embedding.text_embedding.weight",
        "tied.head.modality_heads.0.weight": "tied.embedding.modality_embeddings.0.embedding.weight"}


DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def stored_dtype(config: dict) -> torch.dtype:
    """The dtype the checkpoint's weights are stored in, as its config.json says (bf16 when it says nothing)."""
    return DTYPES.get(config.get("torch_dtype") or config.get("dtype") or "bfloat16", torch.bfloat16)


def read_state(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of the checkpoint directory PATH (model.safetensors, or the shards its index names)."""
    from safetensors.torch import load_file

    index = path / "model.safetensors.index.json"
    files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.is_file() \
        else ["model.safetensors"]
    state = {}
    for name in files:
        if not (path / name).is_file():
            raise CheckpointError(f"{path}: {name} is missing")
        state.update(load_file(str(path / name)))
    return state


def to_ours(state: dict[str, torch.Tensor], where: str) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(the model's weights under our names, the codec's weights under their checkpoint names). A tied copy that
    differs from what it ties to, or a key of no known part, is an error naming it."""
    ours, codec = {}, {}
    for key, value in state.items():
        if key.startswith(CODEC_PREFIX):
            codec[key] = value
            continue
        if key in TIED:
            if TIED[key] not in state or not torch.equal(value, state[TIED[key]]):
                raise CheckpointError(f"{where}: {key} is not equal to {TIED[key]}, which it ties to (the audio head "
                                      f"is the audio embedding)")
            continue
        prefix = next((p for p in KEY_MAP if key.startswith(p)), None)
        if prefix is None:
            raise CheckpointError(f"{where}: unknown weight {key} (a Higgs TTS 3 checkpoint holds "
                                  f"{', '.join(KEY_MAP)}, {', '.join(TIED)} and the codec under {CODEC_PREFIX})")
        ours[KEY_MAP[prefix] + key[len(prefix):]] = value
    return ours, codec


def to_checkpoint(ours: dict[str, torch.Tensor], codec: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our weights (and the codec's) under the checkpoint's names, the tied copies written as the same values."""
    back = {v: k for k, v in KEY_MAP.items()}
    state = dict(codec)
    for key, value in ours.items():
        prefix = next(p for p in back if key.startswith(p))
        state[back[prefix] + key[len(prefix):]] = value
    for copy, source in TIED.items():
        state[copy] = state[source]
    return state


def load_model(path: str | Path, dtype: torch.dtype | str = torch.float32) -> HiggsTTS3:
    """The model in the native checkpoint directory PATH; every weight of it loaded, nothing left random. DTYPE
    "auto": the dtype it is stored in."""
    path = Path(path)
    config = json.loads((path / "config.json").read_text())
    if config.get("model_type") != "higgs_multimodal_qwen3":
        raise CheckpointError(f"{path}/config.json: model_type {config.get('model_type')!r}, not a Higgs TTS 3 "
                              f"checkpoint (higgs_multimodal_qwen3)")
    dtype = stored_dtype(config) if dtype == "auto" else dtype
    ours, _ = to_ours(read_state(path), str(path))
    model = empty_model(config, dtype)
    missing, unexpected = model.load_state_dict(ours, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{path}: the weights do not match the config (missing {sorted(missing)[:3]}, "
                              f"unexpected {sorted(unexpected)[:3]})")
    return model.to(dtype)  # its buffers too


def save_checkpoint(model: HiggsTTS3, out: Path, codec: dict[str, torch.Tensor]) -> None:
    """MODEL in the native layout in OUT: config.json and model.safetensors (the codec's weights included)."""
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    state = to_checkpoint({k: v.detach().contiguous() for k, v in model.state_dict().items()}, codec)
    # the tied copies are separate tensors in the file, as the hub's checkpoint stores them; only they are copied
    # (a 4B model is not held twice)
    seen = set()
    for key, value in state.items():
        if value.data_ptr() in seen:
            state[key] = value.clone()
        seen.add(value.data_ptr())
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(model.config, indent=2) + "\n")
