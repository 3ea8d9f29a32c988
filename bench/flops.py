"""The FLOPs one training step really does (Higgs-Audio v2, or Higgs TTS 3), counted from the model and the batch:
every matrix product of the forward and of the backward autograd actually runs, nothing else (norms, RoPE,
activations and the softmax are elementwise and left out, as FlopCounterMode leaves them).

- Each position goes through the attention projections; a text position through the text FFN, an audio position
  through the audio FFN (the DualFFN), each at its own size.
- Backward: a frozen weight costs its input gradient only where that input depends on a trained weight (the first
  layer's q/k/v read the frozen embeddings: no input gradient there); a trained weight also its weight gradient.
  A LoRA pair (A: r x in, B: out x r) costs 2r(in + out) forward and as much again for each gradient it needs.
- Attention scores (QK^T and PV): as eager attention runs them, every row against every column of the padded batch
  (`attention="full"`, what FlopCounterMode sees), or what a causal kernel needs over each sample's real length
  (`attention="causal"`, what MFU should count).
- Higgs TTS 3 has one FFN for every position, and one head: its audio embedding read as a linear layer (frozen
  under LoRA, tied, codebooks x 1026).
- The heads: the text head (vocabulary-wide) and the audio head (codebooks x 1026) at the positions that predict a
  label (`heads="labelled"`, our training), or at every position (`heads="every"`, the class's own forward with
  labels: what a step computed before the heads ran only where labels are).

`tests/test_flops.py` checks the count against torch's FlopCounterMode on the tiny models with eager attention.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class StepFlops:
    backbone: float  # projections and FFNs, forward + backward
    attention: float  # QK^T and PV, forward + backward
    text_head: float
    audio_head: float

    @property
    def total(self) -> float:
        return self.backbone + self.attention + self.text_head + self.audio_head


def _linear(n: int, module, grad_in: bool) -> tuple[float, bool]:
    """(FLOPs of MODULE on N rows, forward + backward, whether its output depends on a trained weight). MODULE is an
    nn.Linear, or a peft LoRA layer around one."""
    if hasattr(module, "modules_to_save"):  # peft's trained copy of a whole module (lora.modules_to_save)
        module = module.modules_to_save[module.active_adapters[0]]
    base = getattr(module, "base_layer", module)
    fin, fout = base.in_features, base.out_features
    trained_base = base.weight.requires_grad
    flops = 2.0 * n * fin * fout * (1 + grad_in + trained_base)
    lora = [name for name in getattr(module, "active_adapters", []) if name in getattr(module, "lora_A", {})]
    for name in lora:
        r = module.lora_A[name].out_features
        # forward x A^T and (.)B^T; backward dB, d(xA^T), dA, and dx through A when x needs it
        flops += 2.0 * n * r * (fin + fout) + 2.0 * n * r * (2 * fout + fin + fin * grad_in)
    return flops, grad_in or trained_base or bool(lora)


def step_flops(model, batch, attention: str = "causal", heads: str = "labelled") -> StepFlops:
    """The FLOPs of one forward + backward of BATCH (a NativeBatch or V3Batch) through MODEL
    (HiggsAudioV2ForConditionalGeneration or HiggsTTS3, possibly under peft), the loss from the heads."""
    import torch

    from higgs_ds.models.backend import base_model

    base = base_model(model)
    v3 = hasattr(base, "body")  # Higgs TTS 3: Qwen3Model as `body`, no DualFFN, the tied audio head only
    cfg = base.body.config if v3 else base.config
    mask = batch.attention_mask
    rows, width = mask.shape
    positions = rows * width
    audio = 0 if v3 else int((batch.input_ids == cfg.audio_token_id).sum())
    text = positions - audio
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    qk = cfg.num_attention_heads * head_dim
    if attention == "full":
        pairs = float(rows * width * width)
    elif attention == "causal":
        lengths = mask.sum(1).to(torch.float64)
        pairs = float((lengths * (lengths + 1) / 2).sum())
    else:
        raise ValueError(f"attention: {attention!r} is not full or causal")

    backbone = attn = 0.0
    grad = False  # the hidden state entering the first layer comes from frozen embeddings
    for layer in (base.body if v3 else base.model).layers:
        sa = layer.self_attn
        q, gq = _linear(positions, sa.q_proj, grad)
        k, gk = _linear(positions, sa.k_proj, grad)
        v, gv = _linear(positions, sa.v_proj, grad)
        # scores S = QK^T, then P V: 2 * pairs * qk each forward; backward dQ, dK from dS; dP, dV
        scores = 4.0 * pairs * qk
        scores += 2.0 * pairs * qk * (gq + gk) + 2.0 * pairs * qk * ((gq or gk) + gv)
        attn += scores
        out_grad = gq or gk or gv
        o, go = _linear(positions, sa.o_proj, out_grad)
        grad = grad or go
        ffn = 0.0
        grad_after = grad
        for n, mlp in ((text, layer.mlp),) + (() if v3 else ((audio, layer.audio_mlp),)):
            g, gg = _linear(n, mlp.gate_proj, grad)
            u, gu = _linear(n, mlp.up_proj, grad)
            d, gd = _linear(n, mlp.down_proj, gg or gu or grad)
            ffn += g + u + d
            grad_after = grad_after or gg or gu or gd
        backbone += q + k + v + o + ffn
        grad = grad_after

    if heads == "labelled":
        n_text, n_audio = (0 if v3 else len(batch.text_positions)), len(batch.audio_positions)
    elif heads == "every":
        n_text, n_audio = (0 if v3 else positions), positions
    else:
        raise ValueError(f"heads: {heads!r} is not labelled or every")
    if v3:  # the audio embedding as a linear layer: its input gradient only (frozen) or its weight's too
        table = base.audio_embedding.weight
        return StepFlops(backbone, attn, 0.0, 2.0 * n_audio * table.numel() * (1 + grad + table.requires_grad))
    text_head, _ = _linear(n_text, base.text_lm_head, grad)
    audio_head, _ = _linear(n_audio, base.audio_lm_head, grad)
    return StepFlops(backbone, attn, text_head, audio_head)


def real_size(seq_len: int = 2048, micro_batch: int = 4, preset: str = "attention_audio_ffn"):
    """(model, batch): the 5.77B v2 architecture on the meta device (no memory, no weights) with LoRA rank 16, and
    `micro_batch` voice-cloning samples of `seq_len` positions as bench.gpu builds them."""
    from bench.gpu import synthetic_batch
    from higgs_ds.checkpoints.model import apply_lora
    from higgs_ds.config import LoraConfig
    from higgs_ds.fixtures import V2_ARCH, random_model
    from higgs_ds.models.higgs_v2.model import LORA_PRESETS

    model, native = random_model(V2_ARCH, "meta")
    model = apply_lora(model, LoraConfig(preset=preset, rank=16, alpha=32, dropout=0.0), LORA_PRESETS)
    return model, synthetic_batch(V2_ARCH, native, seq_len, micro_batch)


def main() -> list[tuple[str, str, str]]:
    """Per position of a real-size micro-batch: what a step does now, what the heads cost where no label is (what
    the step did before they ran only where labels are), and causal against full attention."""
    rows = []
    for seq_len, micro in ((2048, 4), (8192, 1)):
        model, batch = real_size(seq_len, micro)
        n = batch.input_ids.numel()
        now = step_flops(model, batch)
        before = step_flops(model, batch, heads="every")
        full = step_flops(model, batch, attention="full")
        labelled = len(batch.text_positions)
        rows += [(f"v2 5.77B, LoRA r16, {micro} x {seq_len} positions: FLOPs a position", f"{now.total / n / 1e9:.2f} G",
                  f"backbone {now.backbone / n / 1e9:.2f} G, causal attention {now.attention / n / 1e9:.2f} G "
                  f"({full.attention / n / 1e9:.2f} G as eager attention runs it), heads "
                  f"{(now.text_head + now.audio_head) / n / 1e9:.3f} G ({labelled} text labels in {n} positions)"),
                 ("  the heads at every position (before)", f"{before.total / n / 1e9:.2f} G",
                  f"wasted {(before.total - now.total) / n / 1e9:.2f} G a position "
                  f"({(before.total - now.total) / before.total:.1%} of that step), text head "
                  f"{(before.text_head - now.text_head) / n / 1e9:.2f} G of it; wasted now: 0")]
    return rows


if __name__ == "__main__":
    from bench.common import table

    table("FLOPs of a training step (counted, bench/flops.py)", main())
