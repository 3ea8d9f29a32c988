"""peft adapters between the two layouts: trained on boson_multimodal's HiggsAudioModel and read by transformers'
HiggsAudioV2ForConditionalGeneration, or the other way round. Only the tensor names and the base differ; the weights
are the same (tests/checkpoints/native/ proves the two models equal)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from higgs_ds.checkpoints.checkpoint_dir import CheckpointError, read_json
from higgs_ds.checkpoints.native import boson_key, native_key

_PEFT_PREFIX = "base_model.model."


def _renamed(key: str, rename) -> str:
    """A peft adapter tensor name with RENAME applied to the model's part of it."""
    if not key.startswith(_PEFT_PREFIX):
        raise CheckpointError(f"adapter weight {key!r} does not start with {_PEFT_PREFIX!r}")
    return _PEFT_PREFIX + rename(key[len(_PEFT_PREFIX):])


def native_adapter_key(key: str) -> str:
    """A boson peft adapter's tensor name on the native model (`base_model.model.layers.0...lora_A.weight` ->
    `base_model.model.model.layers.0...lora_A.weight`)."""
    return _renamed(key, native_key)


def _native_module_names(value):
    """target_modules / modules_to_save on the native model: the module-name suffixes are the same except the heads,
    which lose boson's `audio_decoder_proj.`."""
    if value is None:
        return None
    if isinstance(value, str):  # a regex, as model.apply_lora writes it
        return value.replace(re.escape("audio_decoder_proj."), "").replace("audio_decoder_proj.", "")
    return [v.removeprefix("audio_decoder_proj.") for v in value]


def _write_renamed(src: Path, out: Path, rename, config_changes) -> None:
    """The peft adapter in SRC written to OUT with its tensor names renamed (RENAME on the model's part) and its
    adapter_config.json changed by CONFIG_CHANGES (config -> None, in place)."""
    from safetensors.torch import load_file, save_file

    src, out = Path(src), Path(out)
    config = read_json(src / "adapter_config.json")
    weights = src / "adapter_model.safetensors"
    if not weights.is_file():
        raise CheckpointError(f"{src}: no adapter_model.safetensors")
    state = {_renamed(k, rename): v for k, v in load_file(str(weights)).items()}
    out.mkdir(parents=True, exist_ok=True)
    save_file(state, str(out / "adapter_model.safetensors"), metadata={"format": "pt"})
    config_changes(config)
    (out / "adapter_config.json").write_text(json.dumps(config, indent=2, sort_keys=True))


def native_adapter(src: Path, out: Path, base: str, revision: str | None) -> None:
    """The peft adapter in SRC (trained on boson's HiggsAudioModel) for HiggsAudioV2ForConditionalGeneration in OUT,
    naming BASE (a native checkpoint) at REVISION as its base model."""
    def change(config):
        config.update(base_model_name_or_path=base, revision=revision,
                      target_modules=_native_module_names(config.get("target_modules")),
                      modules_to_save=_native_module_names(config.get("modules_to_save")))

    _write_renamed(src, out, native_key, change)


def boson_adapter(src: Path, out: Path, base: str, revision: str | None) -> None:
    """The peft adapter in SRC (trained on HiggsAudioV2ForConditionalGeneration) for boson's HiggsAudioModel in OUT,
    naming BASE (a boson-layout checkpoint) as its base model. Its target_modules and modules_to_save stay as they
    are: peft matches them as name suffixes, and boson's heads end with the same names."""
    def change(config):
        config.update(base_model_name_or_path=base, revision=revision)
        config.pop("auto_mapping", None)

    _write_renamed(src, out, boson_key, change)
