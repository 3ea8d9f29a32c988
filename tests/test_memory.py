"""The memory model (higgs_ds/memory.py): its trace of a step equals what torch's MemTracker measures on the same
step run for real, the line over layers equals a full trace, the real-size figures the issue targets hold, and
`higgs-ds plan-memory` and the run's fit check say what fits. No GPU here: the card's memory is given as a number,
as torch.cuda would report it."""

import pytest
import torch

from bench.gpu import TINY_ARCH, TINY_IDS
from bench.memory import heads_everywhere, measured_against_traced, real_size_shape
from higgs_ds.checkpoints.model import apply_lora
from higgs_ds.config import ConfigError, LoraConfig, load_config
from higgs_ds.fixtures import random_model
from higgs_ds.memory import GiB, step_memory, trace_step
from higgs_ds.models.higgs_v2.backend import settings_from_ids
from higgs_ds.models.higgs_v2.inputs import NativeCollator, voice_cloning_batch
from higgs_ds.models.higgs_v2.model import LORA_PRESETS, meta_model
from higgs_ds.training.memory_plan import _loss, check_fits, estimate, model_shape
from tests.helpers import run_cli

ZERO2 = "ds_configs/zero2.json"


@pytest.mark.parametrize("checkpointing", [False, True])
def test_the_trace_equals_the_measured_step(checkpointing):
    measured, traced = measured_against_traced(checkpointing)
    print(f"checkpointing {checkpointing}: traced {traced} B, measured {measured} B")
    assert abs(traced - measured) <= 0.05 * measured
    assert measured > 30 * 2**20  # a step of activations, not a few stray tensors


def test_layers_extend_linearly():
    arch = dict(TINY_ARCH, text_config=dict(TINY_ARCH["text_config"], num_hidden_layers=5),
                audio_dual_ffn_layers=list(range(5)))
    _, native = random_model(arch, "meta", ids=TINY_IDS)
    batch = voice_cloning_batch(NativeCollator(settings_from_ids(native, TINY_IDS), native["audio_token_id"]),
                                native["vocab_size"], 300, 3)
    for ckpt in (False, True):
        def build(layers):
            model = meta_model(native, layers, ckpt)
            return apply_lora(model, LoraConfig(rank=4, alpha=8), LORA_PRESETS).to(torch.bfloat16)

        line = step_memory(build, 5, batch, _loss)
        activations, peak = trace_step(build(5), batch, _loss)
        assert line.activations == pytest.approx(activations, rel=1e-3)
        assert line.activations + line.temporaries == pytest.approx(peak, rel=1e-3)


def test_the_real_size_targets():
    """5.77B, LoRA r16 on attention + audio FFN, 4 x 2,048 positions with checkpointing: fits a 24 GB card (22.5
    GiB as the smallest report it) with the allocator's and the context's margin; the heads at every position
    would add at least their bf16 and fp32 text logits."""
    shape = real_size_shape()
    now = estimate(shape, True, 4, 2048)
    assert now.fits(22.5 * GiB), now
    assert 10.5 * GiB < now.weights < 11 * GiB  # 5.77B in bf16
    before = estimate(shape, True, 4, 2048, loss=heads_everywhere)
    positions = 4 * 2048
    assert before.total - now.total > positions * 128256 * (2 + 4)
    assert not before.fits(22.5 * GiB)


def test_plan_memory_prints_the_table_and_the_run_check(fixtures_dir, shards):
    model = fixtures_dir / "model"
    out = run_cli("plan-memory", "--gpu-memory", "80GiB", "--tokens", "2048,4096", f"model.path={model}").stdout
    rows = [line.split() for line in out.splitlines() if line.split()[:1] in (["2048"], ["4096"])]
    assert [(r[0], r[2], r[-1]) for r in rows] == [("2048", "on", "yes"), ("2048", "off", "yes"),
                                                   ("4096", "on", "yes"), ("4096", "off", "yes")], out
    peaks = {(r[0], r[2]): float(r[-3]) for r in rows}
    assert peaks["4096", "off"] > peaks["2048", "off"] > peaks["2048", "on"]

    refused = run_cli("plan-memory", "--gpu-memory", "1GiB", "--tokens", "2048", f"model.path={model}",
                      f"data.train={shards}", check=False)
    assert refused.returncode == 2, refused.stderr
    assert "data.micro_batch_size: the largest micro-batch" in refused.stderr
    assert "not even one sample" in refused.stderr  # DeepSpeed's buckets alone take 0.75 GiB


@pytest.mark.parametrize("family", ["v2", "v3"])
def test_a_run_that_will_not_fit_is_refused_naming_what_fits(fixtures_dir, request, family):
    """The check a run makes on CUDA before its first step, given the card's memory as torch.cuda reports it; for
    each family's model and shards."""
    model, shards = (("model", "shards") if family == "v2" else ("v3_model", "v3_shards"))
    cfg = load_config(None, [f"model.path={fixtures_dir / model}", f"data.train={request.getfixturevalue(shards)}",
                             "data.micro_batch_size=64", "model.activation_checkpointing=false"])
    shape = model_shape(cfg, ZERO2)
    assert shape.family == family
    small, big = (estimate(shape, False, n, 256) for n in (1, 64))
    card = (small.needs() + big.needs()) / 2  # between one sample and 64 of them
    with pytest.raises(ConfigError) as refused:
        check_fits(cfg, shape, card, world=1)
    message = str(refused.value)
    assert message.startswith("data.micro_batch_size: the largest micro-batch (64 x ")
    fitting = int(message.split("data.micro_batch_size=")[1].split()[0])
    longest = int(message.split("(64 x ")[1].split()[0])
    assert estimate(shape, False, fitting, longest).fits(card)
    assert not estimate(shape, False, fitting * 2, longest).fits(card)
    assert "activation checkpointing" in message

    assert check_fits(cfg, shape, 80 * GiB, world=1).fits(80 * GiB)


def test_the_24gb_recipe_fits_a_24gb_card():
    """configs/higgs_v2_lora_24gb.yaml at real size: its token budget in samples of 2,048 positions, or in one
    sample as long as the budget, fits 22.5 GiB (the smallest 24 GB card's report) with the margins."""
    cfg = load_config("configs/higgs_v2_lora_24gb.yaml", need_data=False)
    assert cfg.model.activation_checkpointing and cfg.data.token_budget == 8192
    shape = real_size_shape(cfg.lora)
    for samples, tokens in ((cfg.data.token_budget // 2048, 2048), (1, cfg.data.token_budget)):
        m = estimate(shape, True, samples, tokens)
        assert m.needs() < 20 * GiB, (samples, tokens, m)  # 2.5 GiB to spare beyond the margins


def test_higgs_tts3_at_real_size():
    """The v3 architecture at full size (random weights; Qwen3-4B's backbone with the tied audio table): its
    parameters, and a 4 x 2,048 step with checkpointing inside a 24 GB card by the memory model."""
    from bench.memory import v3_step
    from higgs_ds.models.higgs_v3.fixture import REAL_SIZE_CONFIG
    from higgs_ds.models.higgs_v3.model import meta_model

    model = meta_model(REAL_SIZE_CONFIG)
    assert model.body.embed_tokens.weight.numel() == 151936 * 2560
    assert model.audio_embedding.weight.numel() == 8 * 1026 * 2560
    assert sum(p.numel() for p in model.parameters()) == 4_043_480_576
    step = v3_step(True, 4, 2048)
    assert step.fits(22.5 * GiB), step
    assert 7.5 * GiB < step.weights < 7.6 * GiB
