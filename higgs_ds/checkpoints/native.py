"""The transformers-native layout of Higgs-Audio v2 (model_type `higgs_audio_v2`: transformers >= 5.3 and vLLM-Omni)
to and from boson_multimodal's: configs, weight names, model directories and peft adapters.

Only JSON and safetensors are read and written, so converting needs no transformers 5.x. The weights are renamed,
never changed: boson -> native -> boson gives back the same bytes.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import torch

from higgs_ds.checkpoints.checkpoint_dir import NATIVE_MODEL_TYPE, CheckpointError, read_json

NATIVE_ARCHITECTURE = "HiggsAudioV2ForConditionalGeneration"
TESTED_TRANSFORMERS = "5.25.0"  # the transformers release the exports are checked against (tests/checkpoints/native/)
# what HiggsAudioV2Config uses when a config.json has no rope_parameters (not Llama-3.2's own scaling)
NATIVE_DEFAULT_ROPE = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0, "high_freq_factor": 0.5,
                       "low_freq_factor": 0.125, "original_max_position_embeddings": 1024}
# special tokens the other layout's config needs, read from the text tokenizer
AUDIO_IN_TOKEN, AUDIO_EOS_TOKEN, AUDIO_DELAY_TOKEN, EOT_TOKEN = (
    "<|AUDIO|>", "<|audio_eos|>", "<|reserved_special_token_6|>", "<|eot_id|>")
TEXT_CONFIG_KEYS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                    "num_key_value_heads", "head_dim", "hidden_act", "max_position_embeddings", "rms_norm_eps",
                    "attention_bias", "attention_dropout", "mlp_bias", "tie_word_embeddings", "initializer_range",
                    "pretraining_tp")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")
SHARD_BYTES = 5 * 1024 ** 3

# boson name -> native name, applied in order (as transformers' convert_higgs_audio_v2_to_hf.py maps them)
_TO_NATIVE = [(r"^audio_codebook_embeddings\.", "model.embed_audio_tokens.embed_audio_tokens."),
              (r"^(embed_tokens|layers|norm)\.", r"model.\1."),
              (r"^audio_decoder_proj\.(audio_lm_head|text_lm_head)\.", r"\1.")]
_TO_BOSON = [(r"^model\.embed_audio_tokens\.embed_audio_tokens\.", "audio_codebook_embeddings."),
             (r"^model\.(embed_tokens|layers|norm)\.", r"\1."),
             (r"^(audio_lm_head|text_lm_head)\.", r"audio_decoder_proj.\1.")]
# boson-only buffers saved by older boson checkpoints; no weights
_BOSON_DROPPED = ("audio_codebook_weights", "rotary_emb.inv_freq", "rotary_emb.original_inv_freq")
# boson's PartiallyFrozen modules store a frozen and a trainable part of one matrix: joined on dim 0
_PARTIAL = {"embed_tokens.weight": ("embed_tokens.embedding_frozen.weight", "embed_tokens.embedding_trainable.weight")}
for _head in ("audio_lm_head", "text_lm_head"):
    _PARTIAL[f"audio_decoder_proj.{_head}.weight"] = (f"audio_decoder_proj.{_head}.linear_frozen.weight",
                                                      f"audio_decoder_proj.{_head}.linear_trainable.weight")


def _rename(key: str, rules) -> str | None:
    for pattern, repl in rules:
        new, n = re.subn(pattern, repl, key)
        if n:
            return new
    return None


def native_key(boson_key: str) -> str:
    new = _rename(boson_key, _TO_NATIVE)
    if new is None:
        raise CheckpointError(f"weight {boson_key!r} has no counterpart in the transformers-native layout")
    return new


def boson_key(key: str) -> str:
    new = _rename(key, _TO_BOSON)
    if new is None:
        raise CheckpointError(f"weight {key!r} has no counterpart in boson_multimodal's layout")
    return new


def special_token_ids(directory: Path) -> dict[str, int]:
    """Ids of the audio special tokens in the text tokenizer saved in DIRECTORY (either layout saves one there)."""
    from tokenizers import Tokenizer

    path = Path(directory) / "tokenizer.json"
    if not path.is_file():
        raise CheckpointError(f"{directory}: no tokenizer.json; converting between layouts needs the text "
                              f"tokenizer's ids of {AUDIO_IN_TOKEN}, {AUDIO_EOS_TOKEN} and {AUDIO_DELAY_TOKEN}")
    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as e:  # tokenizers raises its own Exception type for a damaged file
        raise CheckpointError(f"{path}: not a readable tokenizer ({e})") from None
    ids = {t: tok.token_to_id(t) for t in (AUDIO_IN_TOKEN, AUDIO_EOS_TOKEN, AUDIO_DELAY_TOKEN, EOT_TOKEN)}
    return {t: i for t, i in ids.items() if i is not None}


def _need(mapping: dict, key: str, where: str):
    if key not in mapping:
        raise CheckpointError(f"{where}: no key {key!r}")
    return mapping[key]


# ---- configs ----

def native_config(boson: dict, ids: dict[str, int], where: str = "config.json") -> dict:
    """HiggsAudioV2Config's config.json for a boson HiggsAudioConfig dict; refuses what the native class cannot
    express (it has every layer DualFFN with the text FFN's sizes, no audio self-attention, no audio tower)."""
    text = _need(boson, "text_config", where)
    layers = _need(text, "num_hidden_layers", f"{where} text_config")
    problems = []
    if boson.get("audio_adapter_type", "dual_ffn_fast_forward") not in ("dual_ffn", "dual_ffn_fast_forward"):
        problems.append(f"audio_adapter_type {boson.get('audio_adapter_type')!r} (native: DualFFN)")
    if sorted(boson.get("audio_dual_ffn_layers") or []) != list(range(layers)):
        problems.append(f"audio_dual_ffn_layers {boson.get('audio_dual_ffn_layers')} (native: every one of the "
                        f"{layers} layers has the audio FFN)")
    for key, text_key in (("audio_ffn_hidden_size", "hidden_size"), ("audio_ffn_intermediate_size",
                                                                      "intermediate_size")):
        if boson.get(key, text.get(text_key)) != text.get(text_key):
            problems.append(f"{key} {boson.get(key)} (native: the text FFN's {text_key}, {text.get(text_key)})")
    for key, want in (("use_audio_out_self_attention", False), ("use_audio_out_embed_projector", False),
                      ("audio_embed_avg", False), ("use_delay_pattern", True), ("use_rq_transformer", False),
                      ("encode_audio_in_tokens", True), ("audio_decoder_proj_num_layers", 0)):
        if boson.get(key, want) != want:
            problems.append(f"{key} {boson.get(key)!r} (native: {want!r})")
    if not boson.get("skip_audio_tower", True) and boson.get("encode_whisper_embed", False):
        problems.append("a Whisper audio tower (encode_whisper_embed)")
    if problems:
        raise CheckpointError(f"{where}: this boson_multimodal model cannot be written in the transformers-native "
                              f"layout: " + "; ".join(problems))
    theta = text.get("rope_theta", 10000.0)
    scaling = dict(text.get("rope_scaling") or {})
    rope = {"rope_type": scaling.pop("rope_type", scaling.pop("type", "default")), "rope_theta": theta, **scaling}
    out = {"architectures": [NATIVE_ARCHITECTURE], "model_type": NATIVE_MODEL_TYPE}
    out.update({k: text[k] for k in TEXT_CONFIG_KEYS if k in text})
    out.setdefault("head_dim", text["hidden_size"] // text["num_attention_heads"])
    # what boson's model (LlamaConfig) uses for a key its config.json leaves out, where the native class's default
    # differs: written out, so both classes compute the same
    out.setdefault("rms_norm_eps", 1e-6)
    out.setdefault("num_key_value_heads", text["num_attention_heads"])
    out.update(rope_parameters=rope, pad_token_id=boson.get("pad_token_id", text.get("pad_token_id")),
               bos_token_id=text.get("bos_token_id"), eos_token_id=ids.get(EOT_TOKEN, text.get("eos_token_id")),
               num_codebooks=boson["audio_num_codebooks"], codebook_size=boson["audio_codebook_size"] + 2,
               audio_token_id=boson["audio_out_token_idx"], audio_bos_token_id=boson["audio_out_bos_token_id"],
               audio_delay_token_id=_need(ids, AUDIO_DELAY_TOKEN, "the text tokenizer"),
               audio_stream_bos_id=boson["audio_stream_bos_id"], audio_stream_eos_id=boson["audio_stream_eos_id"],
               dtype=str(boson.get("torch_dtype") or "float32"), transformers_version=TESTED_TRANSFORMERS)
    return out


def boson_config(native: dict, ids: dict[str, int], where: str = "config.json") -> dict:
    """boson_multimodal's HiggsAudioConfig dict for a native config.json (the inverse of native_config)."""
    for key in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size",
                "num_codebooks", "codebook_size", "audio_token_id", "audio_bos_token_id"):
        _need(native, key, where)
    rope = dict(native.get("rope_parameters") or NATIVE_DEFAULT_ROPE)
    rope_type = rope.pop("rope_type", "default")
    theta = rope.pop("rope_theta", 10000.0)
    text = {"model_type": "llama", **{k: native[k] for k in TEXT_CONFIG_KEYS if k in native},
            "rope_theta": theta, "rope_scaling": None if rope_type == "default" else {"rope_type": rope_type, **rope},
            "bos_token_id": native.get("bos_token_id"), "eos_token_id": native.get("eos_token_id"),
            "pad_token_id": native.get("pad_token_id")}
    text.setdefault("head_dim", native["hidden_size"] // native["num_attention_heads"])
    # the native class's defaults where LlamaConfig's differ (HiggsAudioV2Config)
    text.setdefault("rms_norm_eps", 1e-5)
    text.setdefault("num_key_value_heads", 8)
    layers = native["num_hidden_layers"]
    return {"architectures": ["HiggsAudioModel"], "model_type": "higgs_audio", "text_config": text,
            "audio_adapter_type": "dual_ffn_fast_forward", "audio_ffn_hidden_size": native["hidden_size"],
            "audio_ffn_intermediate_size": native["intermediate_size"], "audio_dual_ffn_layers": list(range(layers)),
            "use_delay_pattern": True, "skip_audio_tower": True, "encode_whisper_embed": False,
            "encode_audio_in_tokens": True, "audio_num_codebooks": native["num_codebooks"],
            "audio_codebook_size": native["codebook_size"] - 2,
            "audio_stream_bos_id": native.get("audio_stream_bos_id", 1024),
            "audio_stream_eos_id": native.get("audio_stream_eos_id", 1025),
            "audio_in_token_idx": _need(ids, AUDIO_IN_TOKEN, "the text tokenizer"),
            "audio_out_token_idx": native["audio_token_id"], "audio_out_bos_token_id": native["audio_bos_token_id"],
            "audio_eos_token_id": _need(ids, AUDIO_EOS_TOKEN, "the text tokenizer"),
            "pad_token_id": native.get("pad_token_id"), "audio_decoder_proj_num_layers": 0,
            "use_audio_out_self_attention": False, "use_audio_out_embed_projector": False, "audio_embed_avg": False,
            "torch_dtype": native.get("dtype") or native.get("torch_dtype") or "float32"}


def native_generation_config(native: dict) -> dict:
    """generation_config.json for transformers' generate: sampling with boson's defaults, its RAS window, and the
    end of text after the audio stream ends."""
    return {"bos_token_id": native.get("bos_token_id"), "eos_token_id": native.get("eos_token_id"),
            "pad_token_id": native.get("pad_token_id"), "do_sample": True, "temperature": 0.7, "top_p": 0.95,
            "ras_win_len": 7, "ras_win_max_num_repeat": 2, "transformers_version": TESTED_TRANSFORMERS}


# ---- weights ----

class WeightFiles:
    """The tensors of a directory's *.safetensors files, read one at a time (a 5.77B model never sits in memory
    twice)."""

    def __init__(self, directory: Path):
        from safetensors import safe_open

        self.directory = Path(directory)
        files = sorted(self.directory.glob("*.safetensors"))
        if not files:
            raise CheckpointError(f"{self.directory}: no *.safetensors weights")
        self.where: dict[str, Path] = {}
        self._open = {}
        for f in files:
            try:
                handle = safe_open(str(f), framework="pt", device="cpu")
            except Exception as e:  # safetensors raises SafetensorError (not an OSError) for a damaged header
                raise CheckpointError(f"{f}: not a readable safetensors file ({e})") from None
            self._open[f] = handle
            for key in handle.keys():
                self.where[key] = f
        index = self.directory / "model.safetensors.index.json"
        if index.is_file():
            listed = read_json(index).get("weight_map", {})
            missing = sorted(k for k, f in listed.items() if k not in self.where)
            if missing:
                raise CheckpointError(f"{index} lists {len(missing)} weights that no file holds (e.g. {missing[0]!r} "
                                      f"in {listed[missing[0]]}): a shard is missing or damaged")

    def keys(self) -> list[str]:
        return list(self.where)

    def get(self, key: str) -> torch.Tensor:
        f = self.where[key]
        try:
            return self._open[f].get_tensor(key)
        except Exception as e:
            raise CheckpointError(f"{f}: weight {key!r} cannot be read ({e}): the file is damaged") from None

    def meta(self, key: str) -> tuple[list[int], str]:
        piece = self._open[self.where[key]].get_slice(key)
        return piece.get_shape(), piece.get_dtype()


_BYTES = {"F64": 8, "F32": 4, "BF16": 2, "F16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}


def write_weights(out: Path, names: list[str], size_of, get, max_bytes: int = SHARD_BYTES) -> None:
    """Write tensors NAMES (GET(name) -> tensor) as model.safetensors, or as model-0000i-of-0000N.safetensors shards
    of at most MAX_BYTES with the index transformers reads, loading one shard's tensors at a time."""
    from safetensors.torch import save_file

    shards, current, used = [], [], 0
    for name in names:
        size = size_of(name)
        if current and used + size > max_bytes:
            shards.append(current)
            current, used = [], 0
        current.append(name)
        used += size
    shards.append(current)
    weight_map, total = {}, 0
    for i, shard in enumerate(shards):
        fname = "model.safetensors" if len(shards) == 1 else f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        tensors = {name: get(name).contiguous() for name in shard}
        save_file(tensors, str(out / fname), metadata={"format": "pt"})
        total += sum(t.numel() * t.element_size() for t in tensors.values())
        weight_map.update(dict.fromkeys(shard, fname))
        del tensors
    if len(shards) > 1:
        (out / "model.safetensors.index.json").write_text(json.dumps(
            {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))


def copy_tokenizer(src: Path, out: Path) -> None:
    """The text tokenizer's files of SRC (either transformers major version's) into OUT."""
    for name in TOKENIZER_FILES:
        if (src / name).is_file():
            shutil.copy(src / name, out / name)


def boson_model_shapes(native: dict) -> dict[str, list[int]]:
    """Every weight of boson's HiggsAudioModel for the native config NATIVE, by boson name, with its shape: read off
    transformers' HiggsAudioV2ForConditionalGeneration (text head included) built on the meta device, which holds
    the same weights under other names (tests/checkpoints/native/ proves the two models equal)."""
    from transformers import HiggsAudioV2Config, HiggsAudioV2ForConditionalGeneration

    with torch.device("meta"):
        model = HiggsAudioV2ForConditionalGeneration(HiggsAudioV2Config.from_dict(native), use_text_head=True)
    return {boson_key(k): list(v.shape) for k, v in model.state_dict().items()}


def check_against_boson_model(native: dict, shapes: dict[str, list[int]], where: str) -> None:
    """Every weight boson's HiggsAudioModel of the native config NATIVE has is there with its shape, and nothing
    else (no memory, no init)."""
    want = boson_model_shapes(native)
    missing = sorted(set(want) - set(shapes))
    if missing:
        raise CheckpointError(f"{where}: no weight for {native_key(missing[0])!r} ({len(missing)} of the model's "
                              f"{len(want)} weights are missing)")
    extra = sorted(set(shapes) - set(want))
    if extra:
        raise CheckpointError(f"{where}: weight {native_key(extra[0])!r} is not part of a model of this config.json")
    for k, shape in want.items():
        if shapes[k] != shape:
            raise CheckpointError(f"{where}: weight {native_key(k)!r} has shape {shapes[k]}, config.json implies "
                                  f"{shape}")


def native_to_boson(src: Path, out: Path) -> None:
    """A native model directory (config.json, safetensors, tokenizer files) as boson_multimodal's layout in OUT."""
    src, out = Path(src), Path(out)
    native = read_json(src / "config.json")
    ids = special_token_ids(src)
    boson = boson_config(native, ids, str(src / "config.json"))
    weights = WeightFiles(src)
    keys = weights.keys()
    # transformers' converter also saved the heads under their boson names; the native names are the ones loaded
    keys = [k for k in keys if not (k.startswith("audio_decoder_proj.") and k.split(".", 1)[1] in keys)]
    if "text_lm_head.weight" not in keys:
        raise CheckpointError(f"{src}: no 'text_lm_head.weight' (the model was saved without use_text_head=True); "
                              f"boson_multimodal's model needs its text head. Save it again from "
                              f"HiggsAudioV2ForConditionalGeneration.from_pretrained(..., use_text_head=True)")
    names = {}
    for k in keys:
        names[boson_key(k)] = k
    shapes = {b: weights.meta(n)[0] for b, n in names.items()}
    check_against_boson_model(native, shapes, str(src))
    out.mkdir(parents=True, exist_ok=True)
    write_weights(out, sorted(names), lambda b: _nbytes(weights, names[b]), lambda b: weights.get(names[b]))
    (out / "config.json").write_text(json.dumps(boson, indent=2))
    copy_tokenizer(src, out)


def _nbytes(weights: WeightFiles, key: str) -> int:
    shape, dtype = weights.meta(key)
    n = 1
    for d in shape:
        n *= d
    return n * _BYTES.get(dtype, 4)


def boson_state_to_native(keys) -> dict[str, tuple[str, ...]]:
    """native name -> the boson names it is made of (two for a PartiallyFrozen module, else one); boson-only
    buffers dropped."""
    keys = set(keys)
    out = {}
    for joined, parts in _PARTIAL.items():
        if parts[0] in keys:
            out[native_key(joined)] = parts
            keys -= set(parts)
    for k in sorted(keys):
        if k.endswith(_BOSON_DROPPED):
            continue
        out[native_key(k)] = (k,)
    return out


def boson_to_native(src: Path, out: Path, tokenizer_dir: Path | None = None) -> None:
    """A boson_multimodal model directory as a native one in OUT: config.json (model_type higgs_audio_v2),
    safetensors with native names, generation_config.json, and the text tokenizer (from TOKENIZER_DIR, default
    SRC)."""
    src, out = Path(src), Path(out)
    tokenizer_dir = Path(tokenizer_dir or src)
    boson = read_json(src / "config.json")
    native = native_config(boson, special_token_ids(tokenizer_dir), str(src / "config.json"))
    weights = WeightFiles(src)
    parts = boson_state_to_native(weights.keys())
    out.mkdir(parents=True, exist_ok=True)

    def get(name):
        tensors = [weights.get(p) for p in parts[name]]
        return tensors[0] if len(tensors) == 1 else torch.cat(tensors, dim=0)

    write_weights(out, list(parts), lambda n: sum(_nbytes(weights, p) for p in parts[n]), get)
    write_native_config(out, native)
    copy_tokenizer(tokenizer_dir, out)


def write_native_config(out: Path, native: dict) -> None:
    (out / "config.json").write_text(json.dumps(native, indent=2))
    (out / "generation_config.json").write_text(json.dumps(native_generation_config(native), indent=2))


def save_boson_state(state: dict[str, torch.Tensor], native: dict, tokenizer_dir: Path, out: Path) -> None:
    """A native model's state dict (native config NATIVE, text head included) written as a boson_multimodal model
    directory: weights under boson's names, boson's config.json, the text tokenizer's files."""
    boson = boson_config(native, special_token_ids(tokenizer_dir))
    names = {boson_key(k): k for k in state}
    check_against_boson_model(native, {b: list(state[n].shape) for b, n in names.items()}, str(out))
    out.mkdir(parents=True, exist_ok=True)
    write_weights(out, sorted(names), lambda b: state[names[b]].numel() * state[names[b]].element_size(),
                  lambda b: state[names[b]])
    (out / "config.json").write_text(json.dumps(boson, indent=2))
    copy_tokenizer(tokenizer_dir, out)
