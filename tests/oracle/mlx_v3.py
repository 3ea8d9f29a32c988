"""mlx-audio's Higgs TTS 3 (mlx_audio.tts.models.higgs_audio_v3, MIT) on a checkpoint directory, run in .venv-mlx:
the independent implementation the v3 tests check ours against. It loads the checkpoint strictly through its own
`sanitize`, builds the prompt with its own prompt builder and generates with its own loop.

    .venv-mlx/bin/python tests/oracle/mlx_v3.py logits CKPT IN.npz OUT.npz
    .venv-mlx/bin/python tests/oracle/mlx_v3.py generate CKPT IN.npz OUT.npz
    .venv-mlx/bin/python tests/oracle/mlx_v3.py steps - IN.npz OUT.npz     # its sampler alone, over IN's `logits`

IN.npz: `special` (the ids of <|tts|> <|ref_text|> <|ref_audio|> <|text|> <|audio|>), `text` and `ref_text` (token
ids), `ref_rows` (the reference's delayed rows, [T + 7, 8]; absent: zero-shot); for logits `target_rows` (the target
rows fed after <|audio|>), for generate `max_rows`. OUT.npz: `logits` ([positions from <|audio|> on, 8, 1026], fp32),
or `rows` (the delayed rows generated, greedy) and `codes` (them de-delayed).

The stand-ins here are for what the check does not need: a tokenizer that hands back the ids given (mlx-audio's
builder asks a tokenizer for them) and a codec that records the codes instead of decoding them (mlx-audio's
generate ends in the codec).
"""

import json
import sys
from pathlib import Path

import mlx.core as mx
import numpy as np
from mlx_audio.tts.models.higgs_audio_v3 import HiggsAudioV3PromptBuilder, Model, ModelConfig, ReferenceCodes

NAMES = ("<|tts|>", "<|ref_text|>", "<|ref_audio|>", "<|text|>", "<|audio|>")


class GivenIds:
    """A tokenizer that encodes the strings "TEXT" and "REF" as the ids it was given."""

    def __init__(self, special, text, ref_text):
        self.added = dict(zip(NAMES, (int(i) for i in special)))
        self.texts = {"TEXT": [int(i) for i in text], "REF": [int(i) for i in ref_text]}

    def get_added_vocab(self):
        return self.added

    def encode(self, text, add_special_tokens=False):
        return self.texts[text]


class RecordingCodec:
    def decode(self, codes):
        self.codes = np.array(codes)
        return mx.zeros((codes.shape[0] * 960,), dtype=mx.float32)


def load(ckpt: Path) -> Model:
    config = json.loads((ckpt / "config.json").read_text())
    # the checkpoint's text_config has rope_theta null; mlx-audio's config reader needs the number (every port's 1e6)
    if config["text_config"].get("rope_theta") is None:
        config["text_config"]["rope_theta"] = 1_000_000.0
    model = Model(ModelConfig.from_dict(config))
    weights = {}
    for f in sorted(ckpt.glob("*.safetensors")):
        weights.update(mx.load(str(f)))
    model.load_weights(list(model.sanitize(weights).items()), strict=True)
    model.eval()
    return model


def steps(data, out: str) -> None:
    """mlx-audio's sampler step over the given logits (greedy) until it says done."""
    from mlx_audio.tts.models.higgs_audio_v3 import HiggsSamplerState, step

    state, rows = HiggsSamplerState(num_codebooks=8), []
    for logits in data["logits"]:
        rows.append(np.array(step(mx.array(logits), state, temperature=0.0, top_p=None, top_k=None, boc_id=1024,
                                  eoc_id=1025)))
        if state.generation_done:
            break
    np.savez(out, rows=np.stack(rows))


def main(mode: str, ckpt: str, inp: str, out: str) -> None:
    data = np.load(inp)
    if mode == "steps":
        return steps(data, out)
    model = load(Path(ckpt))
    tokenizer = GivenIds(data["special"], data["text"], data["ref_text"])
    model._tokenizer = tokenizer
    model._prompt_builder = HiggsAudioV3PromptBuilder(tokenizer)
    refs = [ReferenceCodes(codes=mx.array(data["ref_rows"].astype(np.int32)),
                           text="REF" if len(data["ref_text"]) else None)] if "ref_rows" in data else []
    if mode == "logits":
        embeds, n = model._build_prompt_embeddings("TEXT", refs)
        target = model._embed_audio_codes(mx.array(data["target_rows"].astype(np.int32)))[None]
        full = mx.concatenate([embeds, target], axis=1)
        hidden = model(mx.zeros(full.shape[:2], dtype=mx.int32), input_embeddings=full)
        logits = model._audio_logits(hidden[0, n - 1:])
        np.savez(out, logits=np.array(logits.astype(mx.float32)), prompt_length=n)
    else:
        model._codec = RecordingCodec()
        kwargs = {"ref_audio_codes": refs[0].codes, "ref_text": refs[0].text} if refs else {}
        rows = []
        original = model._decode_audio

        def decode(delayed_rows):
            rows.extend(np.array(r) for r in delayed_rows)
            return original(delayed_rows)
        model._decode_audio = decode
        for _ in model.generate("TEXT", temperature=0.0, max_new_tokens=int(data["max_rows"]), **kwargs):
            pass
        np.savez(out, rows=np.stack(rows), codes=model._codec.codes)


if __name__ == "__main__":
    main(*sys.argv[1:5])
