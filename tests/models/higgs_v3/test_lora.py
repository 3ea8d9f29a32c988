"""LoRA on Higgs TTS 3: the default preset adapts attention and MLP of every layer and nothing else; training the
audio embedding whole (lora.modules_to_save) trains one table that is both the input embedding and the head."""

import torch

from higgs_ds.checkpoints.model import apply_lora
from higgs_ds.config import LoraConfig
from higgs_ds.models.higgs_v3.fixture import random_model
from higgs_ds.models.higgs_v3.model import LORA_PRESETS


def test_the_default_preset_adapts_attention_and_mlp_of_every_layer():
    model = apply_lora(random_model(), LoraConfig(rank=4), LORA_PRESETS)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    wrapped = {n.removeprefix("base_model.model.").rsplit(".lora_A", 1)[0] for n in trainable if "lora_A" in n}
    assert wrapped == {f"body.layers.{i}.{m}" for i in (0, 1) for m in LORA_PRESETS["attention_mlp"]}


def test_the_audio_embedding_trained_whole_stays_tied_to_the_head():
    model = apply_lora(random_model(), LoraConfig(rank=4, modules_to_save=["audio_embedding"]), LORA_PRESETS)
    base = model.get_base_model()
    tables = [n for n, p in model.named_parameters() if p.requires_grad and "audio_embedding" in n]
    assert len(tables) == 1  # one trained copy, not an embedding and a head trained apart
    trained = base.audio_embedding.modules_to_save["default"].weight
    rows = torch.randint(0, 1024, (5, 8))
    hidden = torch.randn(3, base.body.config.hidden_size)
    (base.embed_rows(rows).sum() + base.audio_logits(hidden).sum()).backward()
    # both uses reach the trained table: the lookup's rows and the head's every row
    expected = torch.zeros_like(trained)
    expected.index_add_(0, (rows + base.codebook_offsets).flatten(), torch.ones(40, trained.shape[1]))
    expected += hidden.sum(0).expand_as(trained)
    assert torch.allclose(trained.grad, expected, atol=1e-5)
    assert base.audio_embedding.original_module.weight.grad is None
