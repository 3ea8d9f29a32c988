"""LoRA targets and trainability on the native model, a fresh adapter equals the base, activation checkpointing
through the class's own mechanism keeps loss and gradients."""

import copy

import numpy as np
import pytest
import torch

from higgs_ds.checkpoints.model import apply_lora
from higgs_ds.config import ConfigError, LoraConfig
from higgs_ds.models.higgs_v2.heads import forward, hidden_states
from higgs_ds.models.higgs_v2.model import LORA_PRESETS
from higgs_ds.training.loss import combine


def lora(base, **kw):
    return apply_lora(copy.deepcopy(base), LoraConfig(**{"rank": 4, **kw}), LORA_PRESETS)


def test_default_lora_targets_attention_and_audio_ffn_only(native_model):
    _, base, _ = native_model
    model = lora(base)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    wrapped = {n.removeprefix("base_model.model.").rsplit(".lora_A", 1)[0] for n in trainable if "lora_A" in n}
    expected = {f"model.layers.{i}.self_attn.{p}_proj" for i in (0, 1) for p in "qkvo"} | \
               {f"model.layers.{i}.audio_mlp.{p}_proj" for i in (0, 1) for p in ("gate", "up", "down")}
    assert wrapped == expected  # the text MLP (layers.N.mlp.*) is not adapted
    heads = {n.removeprefix("base_model.model.").split(".")[0] for n, p in lora(base, preset="heads").named_parameters()
             if p.requires_grad}
    assert heads == {"text_lm_head", "audio_lm_head"}
    with pytest.raises(ConfigError, match=r"lora.preset: 'attention_mlp' is not a preset of this model's family \(it "
                                          r"has attention_audio_ffn, heads; or default, custom\)"):
        lora(base, preset="attention_mlp")  # Higgs TTS 3's
    with pytest.raises(ConfigError, match="lora.targets: 'self_attn.qq_proj' matches no module"):
        lora(base, preset="custom", targets=["self_attn.qq_proj"])
    # a boson module name (what configs for boson's model say) is an error naming the native one, not ignored
    with pytest.raises(ConfigError, match=r"lora.modules_to_save: 'audio_decoder_proj.audio_lm_head' matches no "
                                          r"module of the model \(it has e.g. 'audio_lm_head'"):
        lora(base, modules_to_save=["audio_decoder_proj.audio_lm_head"])


def test_fresh_adapter_leaves_outputs_equal_to_base(native_model):
    _, base, reader = native_model
    batch = reader.collate(np.array([0, 1, 2]))
    model = lora(base, dropout=0.0).eval()
    base.eval()
    with torch.no_grad():
        assert torch.equal(hidden_states(base, batch), hidden_states(model, batch))
        a, b = forward(base, batch), forward(model, batch)
    assert torch.equal(a.audio_logits, b.audio_logits) and torch.equal(a.sums.text_sum, b.sums.text_sum)


def test_activation_checkpointing_keeps_loss_and_gradients(native_model):
    _, base, reader = native_model
    batch = reader.collate(np.array([0, 1]))
    results = []
    for ckpt in (False, True):
        torch.manual_seed(0)
        model = lora(base, dropout=0.1).train()
        if ckpt:
            model.get_base_model().activation_checkpointing_enable(
                activation_checkpointing_kwargs={"use_reentrant": False})
        torch.manual_seed(1)
        s = forward(model, batch).sums
        loss = combine(s, float(s.text_tokens), float(s.audio_tokens), 1.0, 1.0)
        loss.backward()
        results.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}))
    (l0, g0), (l1, g1) = results
    assert torch.equal(l0, l1)
    for n in g0:
        torch.testing.assert_close(g0[n], g1[n], rtol=0, atol=0)
