"""LoRA targets and trainability, a fresh adapter equals the base, activation checkpointing, the loss."""

import copy

import pytest
import torch
import torch.nn.functional as F

from higgs_ds.collate import make_collator
from higgs_ds.config import LoraConfig, ModelConfig
from higgs_ds.data import BatchReader
from higgs_ds.loss import combine, token_sums
from higgs_ds.model import apply_lora, batch_to_inputs, enable_activation_checkpointing, load_model, \
    load_tokenizer
from higgs_ds.shard_index import ShardIndex


@pytest.fixture(scope="module")
def setup(fixtures_dir, shards):
    mcfg = ModelConfig(path=str(fixtures_dir / "model"), tokenizer=str(fixtures_dir / "tokenizer"))
    model = load_model(mcfg)
    reader = BatchReader(ShardIndex.load(shards), load_tokenizer(mcfg), make_collator(model.config))
    return mcfg, model, reader


def test_default_lora_targets_attention_and_audio_ffn_only(setup):
    mcfg, base, _ = setup
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


def test_fresh_adapter_leaves_outputs_equal_to_base(setup):
    _, base, reader = setup
    batch = batch_to_inputs(reader.collate([0, 1, 2]), "cpu")
    model = apply_lora(copy.deepcopy(base), LoraConfig(rank=4, dropout=0.0)).eval()
    base.eval()
    with torch.no_grad():
        a, b = base(**batch), model(**batch)
    assert torch.equal(a.logits, b.logits) and torch.equal(a.audio_logits, b.audio_logits)


def test_activation_checkpointing_keeps_loss_and_gradients(setup):
    _, base, reader = setup
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


def test_loss_matches_an_independent_per_sample_computation(setup):
    """Per-token CE over the batch, computed here sample by sample with plain loops over positions and codebooks."""
    _, base, reader = setup
    rows = [0, 3, 7]
    batch = reader.collate(rows)
    with torch.no_grad():
        out = base.eval()(**batch_to_inputs(batch, "cpu"))
        s = token_sums(out, batch.label_audio_ids)
    text_sum, text_n = 0.0, 0
    for b in range(out.logits.shape[0]):
        for t in range(out.logits.shape[1] - 1):
            y = int(out.expanded_labels[b, t + 1])
            if y != -100:
                text_sum += float(-F.log_softmax(out.logits[b, t].float(), -1)[y])
                text_n += 1
    audio_sum, audio_n, per_cb = 0.0, 0, [0.0] * 8
    labels = batch.label_audio_ids
    for t in range(out.audio_logits.shape[0] - 1):
        for c in range(8):
            y = int(labels[c, t + 1])
            if y != -100:
                v = float(-F.log_softmax(out.audio_logits[t, c], -1)[y])
                audio_sum, audio_n, per_cb[c] = audio_sum + v, audio_n + 1, per_cb[c] + v
    assert int(s.text_tokens) == text_n > 0 and int(s.audio_tokens) == audio_n > 0
    assert float(s.text_sum) == pytest.approx(text_sum, rel=1e-4)
    assert float(s.audio_sum) == pytest.approx(audio_sum, rel=1e-4)
    assert s.codebook_sums.tolist() == pytest.approx(per_cb, rel=1e-4)
    # only the target turn's audio is trained: references (before start_index) carry no audio labels
    target_frames = sum(int(reader.index.rows["target_frames"][r]) for r in rows)
    assert audio_n == 8 * (target_frames + len(rows))  # every frame x codebook, + one stream eos per sample
    loss = combine(s, text_n, audio_n, 0.5, 2.0)
    assert float(loss) == pytest.approx(0.5 * text_sum / text_n + 2.0 * audio_sum / audio_n, rel=1e-4)
