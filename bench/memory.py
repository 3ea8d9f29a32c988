"""The memory model of a real-size step (higgs_ds/memory.py): the v2 architecture at 5.77B with LoRA rank 16 on
attention and the audio FFN (the shipped recipe, dropout 0.05), bf16 under ZeRO-2 (ds_configs/zero2.json) on one
rank, bench.gpu's voice-cloning batches, for micro-batch token budgets 2k-16k with checkpointing on and off; each
with the heads where labels are (now) and at every position (before). Then the largest budget each card size fits,
and the check of the trace against a step that runs for real here.

    python -m bench.memory
"""

from __future__ import annotations

import json

import torch
import torch.nn.functional as F

from bench.common import REPO
from higgs_ds.config import LoraConfig
from higgs_ds.memory import GiB, trace_step
from higgs_ds.training.memory_plan import BUDGETS, ModelShape, budget_shape, estimate

# a card's memory as torch sees it (total_memory), GiB: the smallest card sold under each size
CARDS = {"24 GB (L4, A10)": 22.5, "40 GB (A100 40GB)": 40.0, "48 GB (L40S, A6000)": 45.0,
         "80 GB (H100, A100 80GB)": 79.6, "141 GB (H200)": 140.4}
RECIPE = LoraConfig(preset="attention_audio_ffn", rank=16, alpha=32, dropout=0.05)


def heads_everywhere(model, batch):
    """The loss as a step computed it before the heads ran only where labels are: both heads at every position,
    their logits in fp32, the labels -100 wherever there is none."""
    from higgs_ds.data.collate import IGNORE
    from higgs_ds.models.backend import base_model
    from higgs_ds.models.higgs_v2.heads import hidden_states

    base = base_model(model)
    hidden = hidden_states(model, batch)
    n, codebooks = hidden.shape[0], base.config.num_codebooks
    text_labels = torch.full((n,), IGNORE, dtype=torch.long)
    text_labels[batch.text_positions] = batch.text_targets
    audio_labels = torch.full((n, codebooks), IGNORE, dtype=torch.long)
    audio_labels[batch.audio_positions] = batch.audio_targets
    text = F.cross_entropy(base.text_lm_head(hidden).float(), text_labels, ignore_index=IGNORE, reduction="sum")
    audio = base.audio_lm_head(hidden).float().view(n * codebooks, -1)
    return text + F.cross_entropy(audio, audio_labels.view(-1), ignore_index=IGNORE, reduction="sum")


def real_size_shape(lora: LoraConfig = RECIPE) -> ModelShape:
    from bench.gpu import arch_settings
    from higgs_ds.fixtures import V2_ARCH, random_model

    _, native = random_model(V2_ARCH, "meta")
    ds_config = json.loads((REPO / "ds_configs" / "zero2.json").read_text())
    return ModelShape(native, arch_settings(V2_ARCH, native), lora, ds_config)


def v3_step(checkpointing: bool, samples: int, tokens: int, config: dict | None = None, dropout: float = 0.05):
    """The memory model of a Higgs TTS 3 step (CONFIG, default the real size: 4.04B), LoRA rank 16 on attention and
    MLP: SAMPLES cloning samples of TOKENS positions, 15% text, a reference and a target clip of equal length."""
    from higgs_ds.models.higgs_v3.backend import V3Settings
    from higgs_ds.models.higgs_v3.fixture import REAL_SIZE_CONFIG

    lora = LoraConfig(preset="attention_mlp", rank=16, alpha=32, dropout=dropout)
    ds_config = json.loads((REPO / "ds_configs" / "zero2.json").read_text())
    shape = ModelShape(config or REAL_SIZE_CONFIG, V3Settings(8), lora, ds_config, "v3")
    return estimate(shape, checkpointing, samples, tokens)


def measured_against_traced(checkpointing: bool) -> tuple[int, int]:
    """(bytes torch's MemTracker measures a real CPU step allocating at its peak, beyond weights; the bytes our
    trace gives for the same step under fake tensors) on a model small enough to run here (hidden 256, 3 layers),
    two voice-cloning samples of 512 and 400 positions (padding: the attention mask is built, as on a GPU)."""
    from torch.distributed._tools.mem_tracker import MemTracker

    from bench.gpu import TINY_ARCH, TINY_IDS
    from higgs_ds.checkpoints.model import apply_lora
    from higgs_ds.fixtures import random_model
    from higgs_ds.models.higgs_v2.backend import settings_from_ids
    from higgs_ds.models.higgs_v2.inputs import NativeCollator, voice_cloning_samples
    from higgs_ds.models.higgs_v2.model import LORA_PRESETS, meta_model
    from higgs_ds.training.memory_plan import _loss

    arch = dict(TINY_ARCH, text_config=dict(TINY_ARCH["text_config"], hidden_size=256, intermediate_size=512,
                                            num_attention_heads=8, num_key_value_heads=2, num_hidden_layers=3,
                                            head_dim=32),
                audio_ffn_hidden_size=256, audio_ffn_intermediate_size=512, audio_dual_ffn_layers=[0, 1, 2])
    model, native = random_model(arch, ids=TINY_IDS)
    settings = settings_from_ids(native, TINY_IDS)
    samples = voice_cloning_samples(settings, 512, 512, 1) + voice_cloning_samples(settings, 512, 400, 1, seed=1)
    batch = NativeCollator(settings, native["audio_token_id"])(samples)
    traced = trace_step(apply_lora(meta_model(native, None, checkpointing), RECIPE, LORA_PRESETS).to(torch.bfloat16),
                        batch, _loss)[1]

    if checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    model = apply_lora(model, RECIPE, LORA_PRESETS).to(torch.bfloat16)
    model.train()
    for p in model.parameters():  # MemTracker hooks every parameter; a frozen one refuses a gradient hook
        if not p.requires_grad:
            p.register_hook = p.register_post_accumulate_grad_hook = _no_hook
    tracker = MemTracker()
    tracker.track_external(model)
    with tracker:
        _loss(model, batch).backward()
    peak = next(iter(tracker.get_tracker_snapshot("peak").values()))
    weights = sum(v for k, v in peak.items() if str(k).endswith(("PARAM", "BUFFER")))
    return peak["Total"] - weights, traced


class _Handle:
    def remove(self) -> None:
        pass


def _no_hook(*args, **kwargs) -> _Handle:
    return _Handle()


def main() -> list[tuple[str, str, str]]:
    shape = real_size_shape()
    rows, fits = [], {}
    for budget in (*BUDGETS, 32768, 65536):  # the larger ones for the cards' table only
        samples, tokens = budget_shape(budget)
        for ckpt in (True, False):
            now = fits[budget, ckpt] = estimate(shape, ckpt, samples, tokens)
            if budget not in BUDGETS:
                continue
            before = estimate(shape, ckpt, samples, tokens, loss=heads_everywhere)
            rows.append((f"{samples} x {tokens}, checkpointing {'on' if ckpt else 'off'}",
                         f"{now.total / GiB:.1f} GiB",
                         f"weights {now.weights / GiB:.1f}, optimizer {now.optimizer / GiB:.2f}, buckets "
                         f"{now.buckets / GiB:.2f}, activations {now.activations / GiB:.1f}, temporaries "
                         f"{now.temporaries / GiB:.1f}; heads at every position (before): {before.total / GiB:.1f} "
                         f"GiB (+{(before.total - now.total) / GiB:.1f})"))
    long = estimate(shape, True, 1, 8192)
    rows.append(("1 x 8192 (one long sample), checkpointing on", f"{long.total / GiB:.1f} GiB",
                 f"activations {long.activations / GiB:.1f}, temporaries {long.temporaries / GiB:.1f}; needs "
                 f"{long.needs() / GiB:.1f} GiB with the margins"))
    for samples, ckpt in ((4, True), (4, False), (8, True)):
        m = v3_step(ckpt, samples, 2048)
        rows.append((f"Higgs TTS 3, {samples} x 2048, checkpointing {'on' if ckpt else 'off'}", f"{m.total / GiB:.1f} GiB",
                     f"weights {m.weights / GiB:.1f}, optimizer {m.optimizer / GiB:.2f}, buckets {m.buckets / GiB:.2f}, "
                     f"activations {m.activations / GiB:.1f}, temporaries {m.temporaries / GiB:.1f}; needs "
                     f"{m.needs() / GiB:.1f} GiB with the margins"))
    budgets = sorted({b for b, _ in fits})
    for card, gib in CARDS.items():
        best = {ckpt: max((b for b in budgets if fits[b, ckpt].fits(gib * GiB)), default=0) for ckpt in (True, False)}
        rows.append((f"largest budget a {card} card fits", f"{best[True]} tokens",
                     f"checkpointing on; off: {best[False] or 'none'} (of {', '.join(map(str, budgets))})"))
    for ckpt in (True, False):
        measured, traced = measured_against_traced(ckpt)
        rows.append((f"traced / measured peak, a step run here (ckpt {'on' if ckpt else 'off'})",
                     f"{traced / measured:.3f}", f"{traced / 2**20:.1f} MiB traced, {measured / 2**20:.1f} MiB "
                                                 f"MemTracker on the real step"))
    return rows


if __name__ == "__main__":
    from bench.common import table

    table("peak memory of a real-size step (traced, higgs_ds/memory.py)", main())
