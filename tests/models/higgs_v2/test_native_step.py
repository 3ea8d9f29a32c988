"""One optimizer step on the native engine's path (higgs_ds.models.higgs_v2 in .venv-native: NativeCollator, the
decoder of transformers' HiggsAudioV2ForConditionalGeneration, the heads only where labels are) against the same
step on boson_multimodal's HiggsAudioModel as training takes it today, from the same samples and the same LoRA
weights: loss, LoRA gradients and the weights after AdamW. Batches with padding and a reference clip in every
sample; a batch of one, which boson pads on the left."""

import numpy as np
import pytest
import torch

from tests.helpers import native

pytestmark = [pytest.mark.slow, pytest.mark.oracle]  # .venv-boson


@pytest.fixture(scope="module")
def converted(fixtures_dir, tmp_path_factory):
    """The fixture model in the native layout, and a LoRA (non-zero B, so A's gradients are not trivially zero)
    saved for boson's model and converted for the native one: (boson peft model, native model dir, native adapter)."""
    from higgs_ds.checkpoints.model import apply_lora
    from higgs_ds.checkpoints.native import boson_to_native
    from higgs_ds.checkpoints.native_adapters import native_adapter
    from higgs_ds.config import LoraConfig, ModelConfig
    from tests.oracle.boson_v2 import LORA_PRESETS, load_model

    out = tmp_path_factory.mktemp("native-step")
    torch.manual_seed(0)  # LoRA A's init draws from the global RNG, which earlier tests have moved
    model = apply_lora(load_model(ModelConfig(path=str(fixtures_dir / "model"))),
                       LoraConfig(preset="custom", targets=["self_attn.q_proj", "self_attn.v_proj",
                                                            "audio_mlp.up_proj", "audio_decoder_proj.text_lm_head",
                                                            "audio_decoder_proj.audio_lm_head"],
                                  rank=4, alpha=8, dropout=0.0), LORA_PRESETS)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    model.save_pretrained(out / "adapter")
    boson_to_native(fixtures_dir / "model", out / "native", fixtures_dir / "tokenizer")
    native_adapter(out / "adapter", out / "adapter-native", str(out / "native"), None)
    return model, out / "native", out / "adapter-native"


@pytest.mark.parametrize("rows", [[0, 1, 2], [3]])
def test_one_step_on_the_native_path_equals_boson_model(converted, tiny_model, rows, tmp_path):
    import dataclasses

    from tests.oracle.boson_v2 import batch_to_inputs
    from higgs_ds.checkpoints.native_adapters import native_adapter_key
    from tests.oracle.boson_v2 import token_sums
    from higgs_ds.training.loss import combine

    model, native_dir, native_adapter_dir = converted
    _, _, reader = tiny_model
    samples = reader.samples(np.array(rows))
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    start = {n: p.detach().clone() for n, p in params.items()}
    model.train()
    model.zero_grad()
    batch = batch_to_inputs(reader.collator(samples), "cpu")
    sums = token_sums(model(**batch), batch["label_audio_ids"])
    loss = combine(sums, float(sums.text_tokens), float(sums.audio_tokens), 1.0, 1.0)
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in params.items()}
    torch.optim.AdamW(params.values(), lr=1e-3, weight_decay=0.0).step()
    after = {n: p.detach().clone() for n, p in params.items()}
    with torch.no_grad():  # the next parametrisation starts from the same weights
        for n, p in params.items():
            p.copy_(start[n])

    torch.save({"samples": [{k: torch.from_numpy(np.array(v)) for k, v in vars(s).items()} for s in samples],
                "settings": dataclasses.asdict(reader.collator.settings),
                "audio_token_id": model.get_base_model().config.audio_out_token_idx}, tmp_path / "in.pt")
    native("lean-step", "--model", native_dir, "--adapter", native_adapter_dir, "--inputs", tmp_path / "in.pt",
           "--out", tmp_path / "out.pt", "--lr", 1e-3)
    theirs = torch.load(tmp_path / "out.pt")

    # the heads only where labels are give the sums of the heads everywhere, to fp32 rounding
    assert theirs["text_sum"].item() == pytest.approx(theirs["full_text_sum"].item(), rel=1e-6)
    assert theirs["audio_sum"].item() == pytest.approx(theirs["full_audio_sum"].item(), rel=1e-6)
    assert (theirs["text_tokens"], theirs["audio_tokens"]) == (int(sums.text_tokens), int(sums.audio_tokens))
    assert theirs["text_sum"].item() == pytest.approx(sums.text_sum.item(), rel=1e-5)
    assert theirs["audio_sum"].item() == pytest.approx(sums.audio_sum.item(), rel=1e-5)
    assert torch.allclose(theirs["codebook_sums"], sums.codebook_sums, rtol=1e-5)
    assert theirs["loss"].item() == pytest.approx(loss.item(), rel=1e-6)

    def native_name(n):  # peft's parameter names carry the adapter name; the saved keys do not
        return native_adapter_key(n.replace(".default.", ".")).replace("lora_A.", "lora_A.default.") \
            .replace("lora_B.", "lora_B.default.")

    assert set(theirs["grads"]) == {native_name(n) for n in grads}
    scale = max(g.abs().max().item() for g in grads.values())
    worst = max((grads[n] - theirs["grads"][native_name(n)]).abs().max().item() for n in grads)
    assert worst < 1e-5 * scale, (worst, scale)
    # Adam's first step moves a weight by about lr * sign(grad): compared where the gradient is above rounding noise
    moved = max(((after[n] - theirs["params"][native_name(n)]).abs() * (grads[n].abs() > 1e-5 * scale))
                .max().item() for n in params)
    assert moved < 1e-6, moved
    print(f"rows {rows}: loss {loss.item():.6f} vs {theirs['loss'].item():.6f}; lean vs every position: text "
          f"{abs(theirs['text_sum'] - theirs['full_text_sum']).item():.1e}, audio "
          f"{abs(theirs['audio_sum'] - theirs['full_audio_sum']).item():.1e}; LoRA grads max |diff| {worst:.1e} "
          f"(largest {scale:.1e}); weights after AdamW {moved:.1e}")
