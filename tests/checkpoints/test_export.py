"""Checkpoint export: merging LoRA into a base held in bf16 (as `higgs-ds export --merge` does for hub checkpoints,
which are stored in bf16) gives exactly the fp32 merge rounded once."""

import torch

from higgs_ds.checkpoints.model import apply_lora, load_model
from higgs_ds.config import LoraConfig, ModelConfig


def test_merge_into_bf16_base_equals_fp32_merge_rounded_once(fixtures_dir, tmp_path):
    from peft import PeftModel

    base_dir = tmp_path / "base"
    load_model(ModelConfig(path=str(fixtures_dir / "model")), torch.bfloat16).save_pretrained(base_dir)
    base_cfg = ModelConfig(path=str(base_dir))
    torch.manual_seed(0)
    model = apply_lora(load_model(base_cfg),
                       LoraConfig(rank=4, alpha=8, dropout=0.0, modules_to_save=["audio_decoder_proj.audio_lm_head"]))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name or "modules_to_save" in name:
                p.normal_(0, 0.05)
    model.save_pretrained(tmp_path / "adapter")

    def merged(dtype):
        peft_model = PeftModel.from_pretrained(load_model(base_cfg, dtype), str(tmp_path / "adapter"))
        return peft_model.merge_and_unload().to(torch.bfloat16).state_dict()

    reference, ours = merged(torch.float32), merged("auto")
    base = load_model(base_cfg, "auto").state_dict()
    assert base["layers.0.self_attn.q_proj.weight"].dtype == torch.bfloat16  # "auto" kept the stored dtype
    assert ours.keys() == reference.keys() and not any("lora" in k for k in ours)
    assert all(torch.equal(ours[k], reference[k]) for k in reference)
    changed = [k for k in reference if not torch.equal(ours[k], base[k])]
    assert "layers.0.self_attn.q_proj.weight" in changed and "audio_decoder_proj.audio_lm_head.weight" in changed
