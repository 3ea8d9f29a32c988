"""bench/flops.py's count of a training step's FLOPs equals torch's FlopCounterMode on the tiny model (eager
attention, whose score products the counter sees), for LoRA on the attention and the audio FFN with the audio head
trained whole, and for LoRA on the heads alone (no backward through the decoder at all)."""

import copy

import numpy as np
import pytest
from torch.utils.flop_counter import FlopCounterMode

from bench.flops import step_flops
from higgs_ds.checkpoints.model import apply_lora
from higgs_ds.config import LoraConfig
from higgs_ds.models.higgs_v2.heads import forward
from higgs_ds.models.higgs_v2.model import LORA_PRESETS


@pytest.mark.parametrize("lora", [dict(preset="attention_audio_ffn", modules_to_save=["audio_lm_head"]),
                                  dict(preset="heads")])
def test_the_count_equals_flop_counter_mode(native_model, lora):
    _, base, reader = native_model
    model = copy.deepcopy(base)
    model.set_attn_implementation("eager")
    model = apply_lora(model, LoraConfig(rank=4, alpha=8, dropout=0.0, **lora), LORA_PRESETS)
    batch = reader.collate(np.array([0, 4, 8]))  # a reference clip each, padding
    with FlopCounterMode(display=False) as counter:
        out = forward(model, batch)
        (out.sums.text_sum + out.sums.audio_sum).backward()
    ours = step_flops(model, batch, attention="full", heads="labelled")
    assert ours.total == counter.get_total_flops(), (ours, counter.get_total_flops())

    every = step_flops(model, batch, attention="full", heads="every")  # the heads at all positions: per row the same
    positions = batch.input_ids.numel()
    assert every.backbone == ours.backbone
    assert every.text_head * len(batch.text_positions) == ours.text_head * positions
    assert every.audio_head * len(batch.audio_positions) == ours.audio_head * positions
    causal = step_flops(model, batch, attention="causal")
    assert causal.attention < ours.attention / 2


def test_the_count_equals_flop_counter_mode_for_higgs_tts_3():
    """The v3 step: LoRA on attention and MLP, the tied audio head (frozen) at the labelled positions."""
    from higgs_ds.data.prompt_formats import TTS3_SPECIAL_TOKENS
    from higgs_ds.models.higgs_v3 import heads
    from higgs_ds.models.higgs_v3.fixture import random_model
    from higgs_ds.models.higgs_v3.inputs import V3Collator, voice_cloning_batch
    from higgs_ds.models.higgs_v3.model import LORA_PRESETS as V3_PRESETS

    base = random_model()
    base.body.set_attn_implementation("eager")
    model = apply_lora(base, LoraConfig(rank=4, alpha=8, dropout=0.0), V3_PRESETS)
    ids = {name: 500 + i for i, name in enumerate(TTS3_SPECIAL_TOKENS)}
    batch = voice_cloning_batch(V3Collator(base.audio, ids["<|audio|>"], pad_id=0), ids, 500, 96, 2)
    with FlopCounterMode(display=False) as counter:
        heads.forward(model, batch).sums.audio_sum.backward()
    ours = step_flops(model, batch, attention="full", heads="labelled")
    assert ours.text_head == 0 and ours.audio_head > 0
    assert ours.total == counter.get_total_flops(), (ours, counter.get_total_flops())
    every = step_flops(model, batch, attention="full", heads="every")
    assert every.audio_head * len(batch.audio_positions) == ours.audio_head * batch.input_ids.numel()
