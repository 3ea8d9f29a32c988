"""Higgs TTS 3 exports: the peft adapter (our module names), or the merged model in the native v3 layout (the tie
kept, the bundled codec and the base's other files carried over), each with the base's licence files and a NOTICE.
Serving engines run v3 merged only (none serves a v3 LoRA), so a merge is what they load."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import torch

from higgs_ds.checkpoints.checkpoint_dir import CheckpointError
from higgs_ds.models.higgs_v3.layout import CODEC_PREFIX, load_model, save_checkpoint, stored_dtype

log = logging.getLogger(__name__)

DERIVED = "Derived from Higgs TTS 3, licensed from Boson AI USA, Inc."
LICENSE_PATTERNS = ("LICENSE*", "LICENCE*", "License*", "license*")
WEIGHT_FILES = ("*.safetensors", "model.safetensors.index.json")


def carry_licence(base: Path, out: Path, required: bool = True) -> list[str]:
    """The base checkpoint's licence files copied into OUT and OUT/NOTICE written (the base's own NOTICE kept
    below the line); the names copied. A base without a licence file is an error (REQUIRED) or a warning: a v3
    derivative must carry it."""
    found = sorted({p for pattern in LICENSE_PATTERNS for p in base.glob(pattern) if p.is_file()})
    if not found:
        if not required:
            log.warning(f"{base}: no LICENSE file to copy beside {out}; `higgs-ds export` will ask for it")
            return []
        raise CheckpointError(f"{base}: no LICENSE file. Higgs TTS 3 weights and their derivatives (LoRA adapters "
                              f"included) carry the Higgs TTS 3 Research and Non-Commercial License: copy the licence "
                              f"file of the hub checkpoint into {base} and export again")
    out.mkdir(parents=True, exist_ok=True)
    for path in found:
        shutil.copy2(path, out / path.name)
    own = (base / "NOTICE").read_text() if (base / "NOTICE").is_file() else ""
    (out / "NOTICE").write_text(DERIVED + "\n" + (f"\n{own}" if own else ""))
    return [p.name for p in found]


def carry_run_licence(cfg, out: Path) -> None:
    """The licence files and NOTICE beside a run's final adapter (ModelBackend.carry_files)."""
    from higgs_ds.checkpoints.hub import locate

    carry_licence(locate(cfg.path, "model")[0].path, out, required=False)


def export_adapter(adapter: Path, base: Path, out: Path) -> Path:
    shutil.copytree(adapter, out, dirs_exist_ok=True)
    licence = carry_licence(base, out)
    log.info(f"adapter {adapter} -> {out} (+ {', '.join(licence)}, NOTICE). Serving engines do not run Higgs TTS 3 "
             f"LoRA adapters: export with --merge for vLLM-Omni, sglang-omni or mlx-audio")
    return out


def codec_state(base: Path) -> dict[str, torch.Tensor]:
    """The bundled codec's weights of the checkpoint BASE, read alone (not the whole model a second time)."""
    from safetensors import safe_open

    codec = {}
    for f in sorted(base.glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as st:
            for key in st.keys():
                if key.startswith(CODEC_PREFIX):
                    codec[key] = st.get_tensor(key)
    return codec


def export_merged(adapter: Path, base: Path, out: Path) -> Path:
    """The base with the adapter folded in, in the base's stored dtype (bf16 for the hub's), as a native v3
    checkpoint in OUT: the audio head written as the audio embedding it is tied to, the codec's weights and every
    other file of the base (tokenizer, configs) carried over, the licence and NOTICE added."""
    from peft import PeftModel

    dtype = stored_dtype(json.loads((base / "config.json").read_text()))
    # peft adds the fp32 LoRA delta to the stored weight in fp32 and rounds once
    model = PeftModel.from_pretrained(load_model(base, dtype), str(adapter)).merge_and_unload()
    out.mkdir(parents=True, exist_ok=True)
    ignore = shutil.ignore_patterns(*WEIGHT_FILES, "config.json", "SOURCE.json")
    shutil.copytree(base, out, dirs_exist_ok=True, ignore=ignore)
    save_checkpoint(model, out, codec_state(base))
    licence = carry_licence(base, out)
    log.info(f"merged {adapter} into {base} -> {out} ({str(dtype).replace('torch.', '')}, Higgs TTS 3's native layout, "
             f"+ {', '.join(licence)}, NOTICE; loads in mlx-audio, vLLM-Omni and sglang-omni)")
    return out
