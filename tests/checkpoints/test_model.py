"""LoRA targets and trainability, a fresh adapter equals the base, activation checkpointing."""

import copy

import pytest
import torch

from higgs_ds.checkpoints.model import apply_lora, batch_to_inputs, enable_activation_checkpointing
from higgs_ds.config import LoraConfig
from higgs_ds.models.boson_v2 import token_sums
from higgs_ds.training.loss import combine


def test_default_lora_targets_attention_and_audio_ffn_only(tiny_model):
    mcfg, base, _ = tiny_model
    model = apply_lora(copy.deepcopy(base), LoraConfig(rank=4))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    wrapped = {n.split(".base_model.model.")[-1].rsplit(".lora_A", 1)[0] for n in trainable if "lora_A" in n}
    wrapped = {n.replace("base_model.model.", "") for n in wrapped}
    expected = {f"layers.{i}.self_attn.{p}_proj" for i in (0, 1) for p in "qkvo"} | \
               {f"layers.{i}.audio_mlp.{p}_proj" for i in (0, 1) for p in ("gate", "up", "down")}
    assert wrapped == expected  # the text MLP (layers.N.mlp.*) is not adapted
    heads = apply_lora(copy.deepcopy(base), LoraConfig(preset="heads", rank=4))
    wrapped = {n for n, p in heads.named_parameters() if p.requires_grad}
    assert wrapped and all("audio_decoder_proj." in n and "lora_" in n for n in wrapped)
    with pytest.raises(ValueError, match="lora target 'self_attn.qq_proj' matches no module"):
        apply_lora(copy.deepcopy(base), LoraConfig(preset="custom", targets=["self_attn.qq_proj"]))


def test_fresh_adapter_leaves_outputs_equal_to_base(tiny_model):
    _, base, reader = tiny_model
    batch = batch_to_inputs(reader.collate([0, 1, 2]), "cpu")
    model = apply_lora(copy.deepcopy(base), LoraConfig(rank=4, dropout=0.0)).eval()
    base.eval()
    with torch.no_grad():
        a, b = base(**batch), model(**batch)
    assert torch.equal(a.logits, b.logits) and torch.equal(a.audio_logits, b.audio_logits)


def test_activation_checkpointing_keeps_loss_and_gradients(tiny_model):
    _, base, reader = tiny_model
    batch = reader.collate([0, 1])
    results = []
    for ckpt in (False, True):
        torch.manual_seed(0)
        model = apply_lora(copy.deepcopy(base), LoraConfig(rank=4, dropout=0.1)).train()
        if ckpt:
            enable_activation_checkpointing(model.base_model.model)
        torch.manual_seed(1)
        out = model(**batch_to_inputs(batch, "cpu"))
        s = token_sums(out, batch.label_audio_ids)
        loss = combine(s, float(s.text_tokens), float(s.audio_tokens), 1.0, 1.0)
        loss.backward()
        results.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}))
    (l0, g0), (l1, g1) = results
    assert torch.equal(l0, l1)
    for n in g0:
        torch.testing.assert_close(g0[n], g1[n], rtol=0, atol=0)
