"""The transformers-native side of tests/checkpoints/native: run by .venv-native's python (transformers 5.x + peft, no
boson_multimodal), one command a call, tensors in and out as torch.save files.

  build-model     a tiny HiggsAudioV2ForConditionalGeneration saved by transformers, with a text tokenizer saved by it
  resave-tokenizer  a native audio tokenizer loaded strictly and saved again by HiggsAudioV2TokenizerModel
  logits          text and audio logits of a native model (optionally with a peft adapter) on given inputs
  step            our loss on native logits, backward, one AdamW step of the LoRA weights
  lean-step       the same step as higgs_ds.models.higgs_v2 takes it: our samples -> NativeCollator -> the heads
                  only where labels are; with the loss sums of the heads at every position beside it
  generate        transformers' generate on a native model, seeded
  clone           higgs_ds.models.higgs_v2.generation on a cloning prompt: the codes it decodes from
  encode          a native audio tokenizer's codes for waveforms
"""

import argparse
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))  # higgs_ds.training.loss: our loss, on the native logits


def load(path, adapter=None, trainable=False):
    """The native model through higgs_ds's own loader (every key loaded, the text head kept), with an adapter."""
    from higgs_ds.models.higgs_v2.model import load_native_model

    model = load_native_model(path)
    if adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter, is_trainable=trainable)
    return model


def backward_and_step(model, loss, lr) -> dict:
    """Backward, then one AdamW step of the trainable weights: their gradients and updated values."""
    loss.backward()
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    grads = {n: p.grad.detach().clone() for n, p in params.items()}
    torch.optim.AdamW(params.values(), lr=lr, weight_decay=0.0).step()
    return {"loss": loss.detach(), "grads": grads, "params": {n: p.detach().clone() for n, p in params.items()}}


def heads(model, inputs):
    """(text logits, audio logits (B, L, codebooks, codebook_size)) at every position."""
    from higgs_ds.models.backend import base_model

    base = base_model(model)
    hidden = base.model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                        position_ids=inputs["position_ids"], audio_input_ids=inputs["audio_input_ids"],
                        audio_input_ids_mask=inputs["audio_input_ids_mask"]).last_hidden_state
    audio = base.audio_lm_head(hidden)
    cfg = base.config
    return base.text_lm_head(hidden), audio.view(*audio.shape[:2], cfg.num_codebooks, cfg.codebook_size)


def build_model(args):
    from transformers import AutoTokenizer, HiggsAudioV2Config, HiggsAudioV2ForConditionalGeneration

    tok = AutoTokenizer.from_pretrained(args.tokenizer)
    ids = {t: tok.convert_tokens_to_ids(t) for t in ("<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>",
                                                     "<|AUDIO_OUT|>", "<|audio_out_bos|>",
                                                     "<|reserved_special_token_6|>")}
    config = HiggsAudioV2Config(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, max_position_embeddings=4096, rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0, "high_freq_factor": 4.0,
                         "low_freq_factor": 1.0, "original_max_position_embeddings": 2048},
        pad_token_id=ids["<|end_of_text|>"], bos_token_id=ids["<|begin_of_text|>"], eos_token_id=ids["<|eot_id|>"],
        num_codebooks=8, codebook_size=1026, audio_token_id=ids["<|AUDIO_OUT|>"],
        audio_bos_token_id=ids["<|audio_out_bos|>"], audio_delay_token_id=ids["<|reserved_special_token_6|>"])
    torch.manual_seed(args.seed)
    model = HiggsAudioV2ForConditionalGeneration(config, use_text_head=True)
    model.save_pretrained(args.out)
    tok.save_pretrained(args.out)
    # its boson-layout copy into the shared cache: the converter reads the shapes off transformers' class, so the
    # oracle venv (transformers 4.46) finds the copy made here
    from higgs_ds.checkpoints.hub import resolve

    resolve(str(args.out), "model")
    print(json.dumps({"parameters": sum(p.numel() for p in model.parameters())}))


def resave_tokenizer(args):
    from transformers import HiggsAudioV2TokenizerModel

    model, info = HiggsAudioV2TokenizerModel.from_pretrained(args.src, output_loading_info=True)
    problems = {k: v for k, v in info.items() if v}
    if problems:
        raise SystemExit(f"{args.src} did not load cleanly: {problems}")
    model.save_pretrained(args.out)
    print(json.dumps({"parameters": sum(p.numel() for p in model.parameters())}))


def logits(args):
    model = load(args.model, args.adapter).eval()
    inputs = torch.load(args.inputs)
    with torch.no_grad():
        text, audio = heads(model, inputs)
    torch.save({"text": text, "audio": audio[inputs["audio_out_mask"]]}, args.out)


def step(args):
    """One optimizer step as higgs_ds/train.py takes it: per-token means of the text and audio CE (loss.py) from
    the native model's logits, backward, AdamW on the LoRA weights."""
    from tests.oracle.boson_v2 import token_sums
    from higgs_ds.training.loss import combine

    model = load(args.model, args.adapter, trainable=True).train()
    inputs = torch.load(args.inputs)
    text, audio = heads(model, inputs)
    outputs = SimpleNamespace(logits=text, expanded_labels=inputs["expanded_labels"],
                              audio_logits=audio[inputs["audio_out_mask"]])
    sums = token_sums(outputs, inputs["label_audio_ids"])
    loss = combine(sums, float(sums.text_tokens), float(sums.audio_tokens), 1.0, 1.0)
    torch.save({**backward_and_step(model, loss, args.lr), "text_sum": sums.text_sum.detach(),
                "audio_sum": sums.audio_sum.detach()}, args.out)


def lean_step(args):
    """One optimizer step on higgs_ds.models.higgs_v2's path, from our samples: NativeCollator's batch, the
    decoder once, the heads only at the positions that predict a label (heads.token_sums); beside it the sums of
    the heads applied at every position (the class's own way), to show nothing is lost."""
    import torch.nn.functional as F

    from higgs_ds.data.collate import IGNORE, CollatorSettings, Sample
    from higgs_ds.models.higgs_v2 import heads as lean
    from higgs_ds.models.higgs_v2.inputs import NativeCollator
    from higgs_ds.training.loss import combine

    given = torch.load(args.inputs, weights_only=False)
    samples = [Sample(**{k: v.numpy() for k, v in s.items()}) for s in given["samples"]]
    batch = NativeCollator(CollatorSettings(**given["settings"]), given["audio_token_id"])(samples)
    model = load(args.model, args.adapter, trainable=True).train()
    hidden = lean.hidden_states(model, batch)
    with torch.no_grad():  # every position through both heads, then the labelled ones picked out
        everywhere = torch.arange(hidden.shape[0])
        text_all = lean.text_logits(model, hidden, everywhere)
        audio_all = lean.audio_logits(model, hidden, everywhere)
        full_text = F.cross_entropy(text_all[batch.text_positions], batch.text_targets, reduction="sum")
        full_audio = F.cross_entropy(audio_all[batch.audio_positions].reshape(-1, audio_all.shape[-1]),
                                     batch.audio_targets.reshape(-1), ignore_index=IGNORE, reduction="sum")
    sums = lean.token_sums(model, batch)
    loss = combine(sums, float(sums.text_tokens), float(sums.audio_tokens), 1.0, 1.0)
    torch.save({**backward_and_step(model, loss, args.lr), "text_sum": sums.text_sum.detach(),
                "audio_sum": sums.audio_sum.detach(), "codebook_sums": sums.codebook_sums,
                "text_tokens": int(sums.text_tokens), "audio_tokens": int(sums.audio_tokens),
                "full_text_sum": full_text, "full_audio_sum": full_audio}, args.out)


def clone(args):
    """A cloning prompt's codes through higgs_ds.models.higgs_v2.generation (transformers' generate)."""
    from higgs_ds.data.collate import CollatorSettings
    from higgs_ds.models.higgs_v2.generation import generate_stream, prompt_inputs, stream_codes

    given = torch.load(args.inputs, weights_only=False)
    model = load(args.model).eval()
    inputs = prompt_inputs(CollatorSettings(**given["settings"]), given["audio_token_id"], given["ids"],
                           [c.numpy() for c in given["ref_codes"]])
    stream = generate_stream(model, inputs, given["max_new_frames"], temperature=0.0, ras_win_len=None)
    torch.save({"stream": torch.from_numpy(stream),
                "codes": torch.from_numpy(stream_codes(stream, model.config.codebook_size - 2,
                                                       model.config.audio_stream_eos_id))}, args.out)


def generate(args):
    model = load(args.model).eval()
    prompt = torch.tensor([json.loads(args.prompt)])
    runs = []
    for _ in range(2):
        torch.manual_seed(args.seed)
        out = model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=args.frames,
                             do_sample=True, temperature=0.7, top_p=0.95)
        runs.append(out)
    torch.save({"codes": runs[0], "again": runs[1]}, args.out)


def encode(args):
    from transformers import HiggsAudioV2TokenizerModel

    model = HiggsAudioV2TokenizerModel.from_pretrained(args.tokenizer).eval()
    if args.acoustic_pad is not None:
        model.pad = args.acoustic_pad
    codes = []
    with torch.no_grad():
        for wav in torch.load(args.wavs):
            codes.append(model.encode(wav.view(1, 1, -1), return_dict=False)[0])
    torch.save(codes, args.out)


def main():
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("build-model")
    p.add_argument("--tokenizer", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=build_model)
    p = sub.add_parser("resave-tokenizer")
    p.add_argument("--src", required=True)
    p.add_argument("--out", required=True)
    p.set_defaults(func=resave_tokenizer)
    for name, func in (("logits", logits), ("step", step), ("lean-step", lean_step), ("clone", clone)):
        p = sub.add_parser(name)
        p.add_argument("--model", required=True)
        p.add_argument("--inputs", required=True)
        p.add_argument("--out", required=True)
        p.add_argument("--adapter", default=None)
        p.add_argument("--lr", type=float, default=1e-3)
        p.set_defaults(func=func)
    p = sub.add_parser("generate")
    p.add_argument("--model", required=True)
    p.add_argument("--prompt", required=True, help="token ids as a JSON list")
    p.add_argument("--frames", type=int, default=24)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    p.set_defaults(func=generate)
    p = sub.add_parser("encode")
    p.add_argument("--tokenizer", required=True)
    p.add_argument("--wavs", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--acoustic-pad", type=int, default=None)
    p.set_defaults(func=encode)
    args = parser.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
