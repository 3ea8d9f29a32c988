"""Both layouts against the real transformers-native classes (transformers 5.x and peft in .venv-native, which
`make test` builds; tests/checkpoints/native/native_side.py runs there): a native checkpoint written by transformers trains with
the same commands and converts exactly, our native exports load and give our logits, transformers' generate runs on
them, one optimizer step of the native class equals ours, and the two audio tokenizer implementations' codes are
measured against each other."""

import json

import pytest
import torch
import yaml

from tests.helpers import BOSON_BACKEND, NATIVE_PY, launch_training, native, read_run, run_cli, train_overrides

pytestmark = [pytest.mark.slow, pytest.mark.oracle]  # .venv-boson


def native_inputs(batch: dict, outputs, audio_token_id: int) -> dict:
    """The native forward's inputs for one of our collated batches, from boson's own expansion of it (its
    expanded_input_ids and masks): one placeholder a frame, the frames' codes as audio_input_ids (B, frames, 8)."""
    in_mask = outputs.audio_in_discrete_codes_mask
    out_mask = outputs.audio_out_mask
    audio = in_mask | out_mask
    codes = torch.zeros(*audio.shape, batch["audio_out_ids"].shape[0], dtype=torch.long)
    if batch["audio_in_ids"] is not None and batch["audio_in_ids"].numel():
        codes[in_mask] = batch["audio_in_ids"].T
    codes[out_mask] = batch["audio_out_ids"].T
    frames = int(audio.sum(1).max())
    audio_input_ids = torch.zeros(audio.shape[0], frames, codes.shape[-1], dtype=torch.long)
    audio_input_ids_mask = torch.zeros(audio.shape[0], frames, dtype=torch.bool)
    for b in range(audio.shape[0]):
        n = int(audio[b].sum())
        audio_input_ids[b, :n] = codes[b][audio[b]]
        audio_input_ids_mask[b, :n] = True
    input_ids = outputs.expanded_input_ids.clone()
    input_ids[audio] = audio_token_id
    attention_mask = outputs.attention_mask
    position_ids = (attention_mask.cumsum(-1) - 1).masked_fill(attention_mask == 0, 1)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids,
            "audio_input_ids": audio_input_ids, "audio_input_ids_mask": audio_input_ids_mask,
            "audio_out_mask": out_mask, "expanded_labels": outputs.expanded_labels,
            "label_audio_ids": batch["label_audio_ids"]}


@pytest.fixture(scope="module")
def reader(fixtures_dir, shards):
    from higgs_ds.checkpoints.model import load_tokenizer
    from higgs_ds.config import ModelConfig
    from higgs_ds.data.loader import BatchReader
    from higgs_ds.data.shard_index import ShardIndex
    from tests.oracle.boson_v2 import load_model, make_collator

    mcfg = ModelConfig(path=str(fixtures_dir / "model"), tokenizer=str(fixtures_dir / "tokenizer"))
    return BatchReader(ShardIndex.load(shards), load_tokenizer(mcfg), make_collator(load_model(mcfg).config))


def boson_outputs(model, reader, rows=(0, 1, 2)):
    from tests.oracle.boson_v2 import batch_to_inputs

    batch = batch_to_inputs(reader.collate(list(rows)), "cpu")
    with torch.no_grad():
        return batch, model.eval()(**batch)


def native_logits(tmp_path, model_dir, inputs, adapter=None, name="logits"):
    torch.save(inputs, tmp_path / f"{name}-in.pt")
    native("logits", "--model", model_dir, "--inputs", tmp_path / f"{name}-in.pt", "--out", tmp_path / f"{name}.pt",
           *(["--adapter", adapter] if adapter else []))
    return torch.load(tmp_path / f"{name}.pt")


def assert_same_logits(ours, theirs, atol):
    """Our boson-side outputs against native logits: text at every position, audio at the audio-out frames."""
    text_diff = (ours.logits.float() - theirs["text"]).abs().max().item()
    audio_diff = (ours.audio_logits.float() - theirs["audio"]).abs().max().item()
    assert text_diff <= atol and audio_diff <= atol, (text_diff, audio_diff)
    return text_diff, audio_diff


@pytest.fixture(scope="module")
def native_model(fixtures_dir, tmp_path_factory):
    """A tiny HiggsAudioV2ForConditionalGeneration and its text tokenizer, written by transformers' own classes
    (Llama-3-style RoPE scaling, rms_norm_eps 1e-5: values the boson fixture does not use), and its boson-layout copy
    in the cache, converted there too."""
    out = tmp_path_factory.mktemp("native") / "model"
    native("build-model", "--tokenizer", fixtures_dir / "tokenizer", "--out", out, "--seed", 3)
    assert json.loads((out / "config.json").read_text())["model_type"] == "higgs_audio_v2"
    return out


def test_a_native_checkpoint_converts_exactly_and_round_trips_bit_for_bit(native_model, reader, tmp_path):
    from safetensors.torch import load_file

    from higgs_ds.checkpoints.hub import resolve
    from higgs_ds.checkpoints.native import boson_to_native
    from higgs_ds.config import ModelConfig
    from tests.oracle.boson_v2 import load_model

    checkpoint = resolve(str(native_model), "model")
    assert checkpoint.converted and checkpoint.spec == str(native_model)
    model = load_model(ModelConfig(path=str(native_model)))
    assert model.name_or_path == str(native_model)
    assert model.config.text_config.rope_scaling["rope_type"] == "llama3"
    batch, ours = boson_outputs(model, reader)
    theirs = native_logits(tmp_path, native_model, native_inputs(batch, ours, model.config.audio_out_token_idx))
    text_diff, audio_diff = assert_same_logits(ours, theirs, atol=1e-5)  # fp32, sdpa on both sides
    print(f"native -> boson forward parity: text {text_diff:.1e}, audio {audio_diff:.1e}")

    back = tmp_path / "back"
    boson_to_native(checkpoint.path, back)
    original, again = load_file(native_model / "model.safetensors"), load_file(back / "model.safetensors")
    assert original.keys() == again.keys() and all(torch.equal(original[k], again[k]) for k in original)


def test_a_native_checkpoint_trains_and_its_native_exports_load_and_match(native_model, fixtures_dir, shards,
                                                                         speech, reader, tmp_path):
    from boson_multimodal.model.higgs_audio import HiggsAudioModel
    from peft import PeftModel

    from tests.oracle.boson_v2 import load_model
    from higgs_ds.config import ModelConfig

    run = tmp_path / "run"
    overrides = train_overrides(fixtures_dir, shards, run, steps=4, precision="fp32",
                                **{"model.path": native_model, "model.tokenizer": "none",
                                   "model.backend": BOSON_BACKEND})
    _, out = launch_training("torchrun", 2, overrides)
    rows, _, _ = read_run(run)
    assert [r["step"] for r in rows] == [1, 2, 3, 4] and rows[-1]["loss"] < rows[0]["loss"]
    config = yaml.safe_load((run / "config.yaml").read_text())["model"]
    assert (config["path"], config["tokenizer"], config["layout"]) == (str(native_model), str(native_model), "native")
    adapter_config = json.loads((run / "adapter" / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == str(native_model)
    utt = json.loads((speech / "utterances.jsonl").read_text().splitlines()[0])
    spoken = tmp_path / "listen" / "hello.wav"
    run_cli("synthesize", "--model", native_model, "--adapter", run / "adapter", "--audio-tokenizer",
            fixtures_dir / "audio_tokenizer", "--ref-audio", speech / utt["audio"], "--ref-text", utt["text"],
            "--text", "Hello world.", "--max-new-tokens", 12, "--device", "cpu", "--quiet", "--out", spoken,
            "--backend", BOSON_BACKEND)
    assert json.loads(spoken.with_suffix(".json").read_text())["generated"] == 1 and spoken.is_file()

    # adapter in the native layout, on HiggsAudioV2ForConditionalGeneration, against ours on the converted model
    adapter = tmp_path / "adapter-native"
    run_cli("export", "--checkpoint", run, "--out", adapter, "--layout", "native", python=NATIVE_PY)
    exported = json.loads((adapter / "adapter_config.json").read_text())
    assert exported["base_model_name_or_path"] == str(native_model)
    ours_model = PeftModel.from_pretrained(load_model(ModelConfig(path=str(native_model))), str(run / "adapter"))
    batch, ours = boson_outputs(ours_model, reader)
    inputs = native_inputs(batch, ours, ours_model.get_base_model().config.audio_out_token_idx)
    theirs = native_logits(tmp_path, native_model, inputs, adapter=adapter, name="adapter")
    print("adapter parity: text %.1e, audio %.1e" % assert_same_logits(ours, theirs, atol=1e-5))

    # merged, native layout, alone: its bf16 weights are boson's merged export's, renamed
    merged_native, merged_boson = tmp_path / "merged-native", tmp_path / "merged-boson"
    run_cli("export", "--checkpoint", run, "--out", merged_native, "--merge", "--layout", "native", python=NATIVE_PY)
    run_cli("export", "--checkpoint", run, "--out", merged_boson, "--merge", "--layout", "boson", python=NATIVE_PY)
    config = json.loads((merged_native / "config.json").read_text())
    assert config["model_type"] == "higgs_audio_v2" and config["dtype"] == "bfloat16"
    assert (merged_native / "generation_config.json").is_file() and (merged_native / "tokenizer.json").is_file()
    _, ours_merged = boson_outputs(HiggsAudioModel.from_pretrained(merged_boson, torch_dtype=torch.float32), reader)
    theirs = native_logits(tmp_path, merged_native, inputs, name="merged")
    print("merged parity: text %.1e, audio %.1e" % assert_same_logits(ours_merged, theirs, atol=1e-5))
    # and the merged model says what the adapter said, up to the bf16 rounding of merged weights
    assert (theirs["audio"].argmax(-1) == ours.audio_logits.argmax(-1)).float().mean() > 0.95

    # transformers' generate on the merged native export, seeded: audio codes, the same twice
    tok = reader.tokenizer
    prompt = tok.encode("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHello world.<|eot_id|>"
                        "<|start_header_id|>assistant<|end_header_id|>\n\n<|audio_out_bos|>",
                        add_special_tokens=False)
    native("generate", "--model", merged_native, "--prompt", json.dumps(prompt), "--frames", 24, "--out",
           tmp_path / "gen.pt")
    gen = torch.load(tmp_path / "gen.pt")
    codes = gen["codes"]
    assert codes.dim() == 3 and codes.shape[0] == 1 and codes.shape[2] == 8 and codes.shape[1] > 8
    assert torch.equal(codes, gen["again"]) and int(codes.min()) >= 0 and int(codes.max()) <= 1025
    assert (codes[0, 0] == 1024).all()  # the stream starts with each codebook's BOS (the delay pattern)


def test_one_optimizer_step_of_the_native_class_equals_ours(fixtures_dir, reader, tmp_path):
    """Our loss (loss.py) on the native model's logits for one of our collated batches, backward, AdamW: the same
    loss, LoRA gradients and updated LoRA weights as the same step on boson's HiggsAudioModel."""
    from higgs_ds.checkpoints.model import apply_lora
    from higgs_ds.checkpoints.native import boson_to_native
    from higgs_ds.checkpoints.native_adapters import native_adapter, native_adapter_key
    from higgs_ds.config import LoraConfig, ModelConfig
    from higgs_ds.training.loss import combine
    from tests.oracle.boson_v2 import LORA_PRESETS, load_model, token_sums

    torch.manual_seed(0)  # LoRA A's init draws from the global RNG, which earlier tests have moved
    model = apply_lora(load_model(ModelConfig(path=str(fixtures_dir / "model"))),
                       LoraConfig(rank=4, alpha=8, dropout=0.0), LORA_PRESETS)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:  # non-zero B: the A gradients are not trivially zero
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    model.save_pretrained(tmp_path / "adapter")
    native_adapter(tmp_path / "adapter", tmp_path / "adapter-native", str(tmp_path / "native"), None)
    boson_to_native(fixtures_dir / "model", tmp_path / "native", fixtures_dir / "tokenizer")

    from tests.oracle.boson_v2 import batch_to_inputs

    batch = batch_to_inputs(reader.collate([0, 1, 2]), "cpu")
    model.train()
    outputs = model(**batch)
    sums = token_sums(outputs, batch["label_audio_ids"])
    loss = combine(sums, float(sums.text_tokens), float(sums.audio_tokens), 1.0, 1.0)
    loss.backward()
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    grads = {n: p.grad.detach().clone() for n, p in params.items()}
    torch.optim.AdamW(params.values(), lr=1e-3, weight_decay=0.0).step()

    inputs = native_inputs(batch, outputs, model.get_base_model().config.audio_out_token_idx)
    torch.save({k: v.detach() if torch.is_tensor(v) else v for k, v in inputs.items()}, tmp_path / "step-in.pt")
    native("step", "--model", tmp_path / "native", "--adapter", tmp_path / "adapter-native", "--inputs",
           tmp_path / "step-in.pt", "--out", tmp_path / "step.pt", "--lr", 1e-3)
    theirs = torch.load(tmp_path / "step.pt")

    def native_name(n):  # peft's parameter names carry the adapter name; the saved keys do not
        return native_adapter_key(n.replace(".default.", ".")).replace("lora_A.", "lora_A.default.") \
            .replace("lora_B.", "lora_B.default.")

    assert theirs["loss"].item() == pytest.approx(loss.item(), rel=1e-6)
    assert set(theirs["grads"]) == {native_name(n) for n in grads}
    scale = max(g.abs().max().item() for g in grads.values())
    worst = max((grads[n] - theirs["grads"][native_name(n)]).abs().max().item() for n in grads)
    assert worst < 1e-5 * scale, (worst, scale)  # fp32 rounding of sums taken in another order
    # Adam's first step moves a weight by about lr * sign(grad): compared where the gradient is well above the
    # rounding noise (a gradient of 1e-9 on one side and -1e-9 on the other moves the weight apart by 2 lr)
    moved = max(((params[n].detach() - theirs["params"][native_name(n)]).abs() * (grads[n].abs() > 1e-5 * scale))
                .max().item() for n in params)
    assert moved < 1e-6, moved
    print(f"one step: loss {loss.item():.6f} vs {theirs['loss'].item():.6f}, LoRA grads max |diff| {worst:.1e} "
          f"(largest gradient {scale:.1e}), weights after AdamW {moved:.1e}")


def test_audio_tokenizer_codes_both_ways(fixtures_dir, speech, tmp_path):
    """Our fixture tokenizer written in the native layout and saved again by HiggsAudioV2TokenizerModel converts
    back to boson's and gives its codes on every clip; shards built from it say so in build.json. The native
    class's own codes are measured against them, with its acoustic padding and with boson's."""
    import librosa
    import numpy as np

    from higgs_ds.audio import read_audio
    from higgs_ds.checkpoints.native_codec import boson_tokenizer_to_native
    from higgs_ds.data.codec import AudioEncoder
    from higgs_ds.fixtures import semantic_model_dir

    boson_tokenizer_to_native(fixtures_dir / "audio_tokenizer", tmp_path / "written", semantic_model_dir(fixtures_dir))
    native_tok = tmp_path / "native-tokenizer"
    native("resave-tokenizer", "--src", tmp_path / "written", "--out", native_tok)

    clips = sorted((speech).rglob("*.wav"))[:6]
    boson = AudioEncoder(str(fixtures_dir / "audio_tokenizer"), None, "cpu")
    converted = AudioEncoder(str(native_tok), None, "cpu")
    assert converted.checkpoint.converted and converted.semantic.path.parent == converted.checkpoint.path
    wavs, ours = [], []
    for clip in clips:
        wav, sr = read_audio(clip)
        wav = librosa.resample(wav, orig_sr=sr, target_sr=24000)  # as boson's encode does; the native one does not
        wavs.append(torch.from_numpy(wav))
        ours.append(boson.encode_waveform(wav, 24000))
        assert np.array_equal(converted.encode_waveform(wav, 24000), ours[-1]), clip
    torch.save(wavs, tmp_path / "wavs.pt")
    agreement = {}
    for pad in (None, 320):
        native("encode", "--tokenizer", native_tok, "--wavs", tmp_path / "wavs.pt", "--out", tmp_path / "codes.pt",
               *(["--acoustic-pad", pad] if pad else []))
        theirs = [c.numpy() for c in torch.load(tmp_path / "codes.pt")]
        assert [b.shape for b in theirs] == [a.shape for a in ours]
        agreement[pad or "native"] = float(np.mean(np.concatenate([a == b for a, b in zip(ours, theirs)], axis=1)))
    print(f"audio codes: transformers' HiggsAudioV2TokenizerModel agrees with boson's on {agreement['native']:.1%} "
          f"(acoustic padding 480), {agreement[320]:.1%} with boson's padding of 320")
    assert agreement[320] == 1.0
    assert agreement["native"] < 1.0

    out = tmp_path / "shards"
    run_cli("shards", "build", "--input", speech / "utterances.jsonl", "--out", out, "--audio-tokenizer", native_tok,
            "--shard-size", 6)
    build = json.loads((out / "build.json").read_text())
    assert build["audio_tokenizer"] == str(native_tok) and build["audio_tokenizer_layout"] == "native"
    assert build["codes_made_by"]["implementation"].endswith("HiggsAudioTokenizer")
    assert build["semantic_model"] == str(native_tok)
