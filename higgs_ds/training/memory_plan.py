"""Will a run's step fit its GPU? The memory model (higgs_ds/memory.py) applied to a training config: the table
`higgs-ds plan-memory` prints, and the check a run makes on CUDA before its first step."""

from __future__ import annotations

import dataclasses
import json
import logging
import warnings

import numpy as np
import torch

from higgs_ds.config import ConfigError, LoraConfig, TrainConfig
from higgs_ds.memory import CONTEXT_BYTES, FRAGMENTATION, GiB, StepMemory, step_memory

log = logging.getLogger("higgs_ds.memory")

BUDGETS = (2048, 4096, 8192, 16384)  # padded tokens a micro-batch
SAMPLE_TOKENS = 2048  # positions a sample in the planning table (the longest a budget's samples run)


@dataclasses.dataclass(frozen=True)
class ModelShape:
    """What the memory of a step depends on besides the batch: the model's config (v2: its native config; v3: its
    config.json), the collator's settings (audio token ids, clip overhead), the LoRA and the family."""
    native: dict
    settings: object  # CollatorSettings (v2), V3Settings (v3)
    lora: LoraConfig
    ds_config: dict
    family: str = "v2"  # or "v3": Higgs TTS 3


def model_shape(cfg: TrainConfig, ds_config_path: str) -> ModelShape:
    from higgs_ds.checkpoints.hub import locate, resolve_native_model

    with open(ds_config_path) as f:
        ds_config = json.load(f)
    checkpoint, layout = locate(cfg.model.path, "model")
    if layout == "tts3":
        from higgs_ds.models.higgs_v3.backend import V3Settings
        from higgs_ds.models.higgs_v3.model import AudioConfig

        config = json.loads((checkpoint.path / "config.json").read_text())
        return ModelShape(config, V3Settings(AudioConfig.from_config(config).num_codebooks), cfg.lora, ds_config,
                          "v3")
    from transformers import HiggsAudioV2Config

    from higgs_ds.models.higgs_v2.backend import collator_settings

    checkpoint = resolve_native_model(cfg.model.path, cfg.model.tokenizer)
    native = json.loads((checkpoint.path / "config.json").read_text())
    settings = collator_settings(HiggsAudioV2Config.from_dict(native), cfg.model)
    return ModelShape(native, settings, cfg.lora, ds_config)


def _loss(model, batch):
    from higgs_ds.models.higgs_v2.heads import forward

    sums = forward(model, batch).sums
    return sums.text_sum + sums.audio_sum


def _v3_loss(model, batch):
    from higgs_ds.models.higgs_v3.heads import forward

    return forward(model, batch).sums.audio_sum


def estimate(shape: ModelShape, checkpointing: bool, samples: int, sample_tokens: int, world: int = 1,
             loss=None) -> StepMemory:
    """The peak of a step over SAMPLES voice-cloning samples of SAMPLE_TOKENS positions each, on one of WORLD
    ranks. LOSS(model, batch) is the step's loss (default: the family's, heads where labels are)."""
    from higgs_ds.checkpoints.model import apply_lora

    if shape.family == "v3":
        from higgs_ds.data.prompt_formats import TTS3_SPECIAL_TOKENS
        from higgs_ds.models.higgs_v3.inputs import V3Collator, voice_cloning_batch
        from higgs_ds.models.higgs_v3.model import LORA_PRESETS, AudioConfig, meta_model

        config = shape.native
        vocab = config["text_config"]["vocab_size"]
        ids = {name: vocab - 8 + i for i, name in enumerate(TTS3_SPECIAL_TOKENS)}  # any ids: shapes count
        collator = V3Collator(AudioConfig.from_config(config), ids["<|audio|>"], pad_id=0)
        batch = voice_cloning_batch(collator, ids, vocab - 8, sample_tokens, samples)
        layers, loss = config["text_config"]["num_hidden_layers"], loss or _v3_loss
    else:
        from higgs_ds.models.higgs_v2.inputs import NativeCollator, voice_cloning_batch
        from higgs_ds.models.higgs_v2.model import LORA_PRESETS, meta_model

        config = shape.native
        batch = voice_cloning_batch(NativeCollator(shape.settings, config["audio_token_id"]), config["vocab_size"],
                                    sample_tokens, samples)
        layers, loss = config["num_hidden_layers"], loss or _loss

    def build(n: int):
        return apply_lora(meta_model(config, n, checkpointing), shape.lora, LORA_PRESETS).to(torch.bfloat16)

    with warnings.catch_warnings():  # transformers' deprecation notes from inside the checkpointing set-up
        warnings.simplefilter("ignore", FutureWarning)
        return step_memory(build, layers, batch, loss, world, shape.ds_config)


def budget_shape(budget: int, sample_tokens: int = SAMPLE_TOKENS) -> tuple[int, int]:
    """(samples, positions each) of a micro-batch of BUDGET padded tokens whose samples run SAMPLE_TOKENS long."""
    samples = max(1, budget // sample_tokens)
    return samples, budget // samples


def table(shape: ModelShape, budgets=BUDGETS, world: int = 1, loss=None) -> list[dict]:
    rows = []
    for budget in budgets:
        for checkpointing in (True, False):
            samples, tokens = budget_shape(budget)
            m = estimate(shape, checkpointing, samples, tokens, world, loss)
            rows.append({"tokens": budget, "samples": samples, "checkpointing": checkpointing, "memory": m})
    return rows


def format_table(rows: list[dict], card_gib: float | None) -> str:
    head = (f"{'tokens':>7} {'samples':>7} {'ckpt':>5} {'weights':>8} {'optim':>6} {'buckets':>8} "
            f"{'activ.':>7} {'temp.':>6} {'peak':>6} {'needs':>6}")
    lines = [head + (f" {'fits ' + format(card_gib, 'g') + ' GiB':>12}" if card_gib else "")]
    for r in rows:
        m = r["memory"]
        line = (f"{r['tokens']:>7} {r['samples']:>7} {'on' if r['checkpointing'] else 'off':>5} "
                f"{m.weights / GiB:>8.2f} {m.optimizer / GiB:>6.2f} {m.buckets / GiB:>8.2f} "
                f"{m.activations / GiB:>7.2f} {m.temporaries / GiB:>6.2f} {m.total / GiB:>6.2f} "
                f"{m.needs() / GiB:>6.2f}")
        if card_gib:
            line += f" {'yes' if m.fits(card_gib * GiB) else 'no':>12}"
        lines.append(line)
    lines.append(f"GiB; needs = peak x {1 + FRAGMENTATION:.2f} (allocator) + {CONTEXT_BYTES / GiB:.0f} GiB (CUDA "
                 f"context, NCCL, cuBLAS)")
    return "\n".join(lines)


def longest_sample(cfg: TrainConfig, clip_overhead: int) -> int | None:
    """Positions of the longest training sample once expanded, or None when its shards lack text token counts."""
    from higgs_ds.data.loader import load_train_index
    from higgs_ds.data.plan import sample_costs

    rows = load_train_index(cfg.data.train).rows
    if len(rows["text_tokens"]) == 0 or (rows["text_tokens"] < 0).any():
        return None
    return int(np.max(sample_costs(rows, clip_overhead)))


def run_batch_shape(cfg: TrainConfig, longest: int) -> tuple[int, int]:
    """(samples, positions) of the run's largest micro-batch: token_budget or micro_batch_size samples of the
    longest sample's length."""
    if cfg.data.token_budget:
        return max(1, min(cfg.data.max_batch_size, cfg.data.token_budget // longest)), longest
    return cfg.data.micro_batch_size, longest


def check_fits(cfg: TrainConfig, shape: ModelShape, card_bytes: float, world: int) -> StepMemory | None:
    """Raise ConfigError, naming what would fit, when the run's largest micro-batch will not fit CARD_BYTES."""
    longest = longest_sample(cfg, shape.settings.clip_overhead)
    if longest is None:
        log.warning("memory check skipped: the training shards hold no text token counts (build them with "
                    "--text-tokenizer)")
        return None
    samples, tokens = run_batch_shape(cfg, longest)
    ckpt = cfg.model.activation_checkpointing
    m = estimate(shape, ckpt, samples, tokens, world)
    if m.fits(card_bytes):
        log.info(f"memory: a step of {samples} x {tokens} positions needs ~{m.needs() / GiB:.1f} GiB of the GPU's "
                 f"{card_bytes / GiB:.1f} GiB")
        return m
    key = "data.token_budget" if cfg.data.token_budget else "data.micro_batch_size"
    fitting = samples
    while fitting > 1 and not estimate(shape, ckpt, fitting, tokens, world).fits(card_bytes):
        fitting //= 2
    fits_at_one = fitting > 1 or estimate(shape, ckpt, 1, tokens, world).fits(card_bytes)
    if not fits_at_one:
        advice = f"not even one sample of {tokens} positions fits"
    elif cfg.data.token_budget:
        advice = f"data.token_budget={fitting * tokens} fits"
    else:
        advice = f"data.micro_batch_size={fitting} fits"
    if not ckpt:
        with_ckpt = estimate(shape, True, samples, tokens, world)
        if with_ckpt.fits(card_bytes):
            advice += f"; model.activation_checkpointing=true fits this batch (~{with_ckpt.needs() / GiB:.1f} GiB)"
        else:
            advice += "; activation checkpointing alone would not fit it"
    raise ConfigError(
        f"{key}: the largest micro-batch ({samples} x {tokens} positions, the longest training sample) needs "
        f"~{m.needs() / GiB:.1f} GiB, more than the GPU's {card_bytes / GiB:.1f} GiB (weights {m.weights / GiB:.1f}, "
        f"optimizer {m.optimizer / GiB:.2f}, buckets {m.buckets / GiB:.2f}, activations {m.activations / GiB:.1f}, "
        f"temporaries {m.temporaries / GiB:.1f} GiB; `higgs-ds plan-memory` prints the table): {advice}. "
        f"memory_check=false skips this check")
