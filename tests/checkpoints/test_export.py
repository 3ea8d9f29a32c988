"""Checkpoint export: merging LoRA into a base held in bf16 (as `higgs-ds export --merge` does for hub checkpoints,
which are stored in bf16) gives exactly the fp32 merge rounded once; and an adapter renamed for boson's model and
back is the same adapter."""

import json

import torch

from higgs_ds.checkpoints.model import apply_lora
from higgs_ds.checkpoints.native_adapters import boson_adapter, native_adapter
from higgs_ds.config import LoraConfig, ModelConfig
from higgs_ds.models.higgs_v2.backend import load
from higgs_ds.models.higgs_v2.model import LORA_PRESETS, load_native_model


def test_merge_into_bf16_base_equals_fp32_merge_rounded_once(fixtures_dir, tmp_path):
    from peft import PeftModel

    base_dir = tmp_path / "base"
    load(ModelConfig(path=str(fixtures_dir / "model"), tokenizer=str(fixtures_dir / "tokenizer")),
         torch.bfloat16).save_pretrained(base_dir)
    (base_dir / "tokenizer.json").write_bytes((fixtures_dir / "tokenizer" / "tokenizer.json").read_bytes())
    torch.manual_seed(0)
    model = apply_lora(load_native_model(base_dir, torch.float32),
                       LoraConfig(rank=4, alpha=8, dropout=0.0, modules_to_save=["audio_lm_head"]), LORA_PRESETS)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name or "modules_to_save" in name:
                p.normal_(0, 0.05)
    model.save_pretrained(tmp_path / "adapter")

    def merged(dtype):
        peft_model = PeftModel.from_pretrained(load_native_model(base_dir, dtype), str(tmp_path / "adapter"))
        return peft_model.merge_and_unload().to(torch.bfloat16).state_dict()

    reference, ours = merged(torch.float32), merged("auto")
    base = load_native_model(base_dir, "auto").state_dict()
    assert base["model.layers.0.self_attn.q_proj.weight"].dtype == torch.bfloat16  # "auto" kept the stored dtype
    assert ours.keys() == reference.keys() and not any("lora" in k for k in ours)
    assert all(torch.equal(ours[k], reference[k]) for k in reference)
    changed = [k for k in reference if not torch.equal(ours[k], base[k])]
    assert "model.layers.0.self_attn.q_proj.weight" in changed and "audio_lm_head.weight" in changed

    # renamed for boson's HiggsAudioModel and back: the same tensors, the same settings
    boson_adapter(tmp_path / "adapter", tmp_path / "boson", "/a/boson/base", None)
    from safetensors.torch import load_file

    keys = list(load_file(tmp_path / "boson" / "adapter_model.safetensors"))
    assert any(k.startswith("base_model.model.layers.0.self_attn.q_proj.lora_A") for k in keys)
    assert any(k.startswith("base_model.model.audio_decoder_proj.audio_lm_head") for k in keys)
    native_adapter(tmp_path / "boson", tmp_path / "again", "/a/native/base", None)
    before, after = (load_file(tmp_path / d / "adapter_model.safetensors") for d in ("adapter", "again"))
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    config = json.loads((tmp_path / "again" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "/a/native/base" and config["modules_to_save"] == ["audio_lm_head"]
