"""The Higgs audio tokenizer between layouts: transformers' HiggsAudioV2TokenizerModel (config.json with
acoustic_model_config / semantic_model_config + model.safetensors, the semantic HuBERT inside) and boson_multimodal's
HiggsAudioTokenizer (config.json + model.pth, the HuBERT loaded by hub id).

The names follow transformers' convert_higgs_audio_v2_tokenizer_to_hf.py. boson's convolutions keep weight norm as
(weight_g, weight_v); the native ones hold the folded weight g * v / |v|. Unfolding takes g = |w| and v = w, which
gives the folded weight back to float rounding, not bit for bit: codes are compared in tests/checkpoints/native/.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import torch

from higgs_ds.checkpoints.checkpoint_dir import NATIVE_TOKENIZER_TYPE, CheckpointError, read_json

# boson_multimodal hard-codes these (dac2.Encoder(64, ...), dac2.Decoder(D, 1024, ...), a 768-wide HuBERT, and
# its semantic encoder's layout); a native tokenizer with other values has no boson counterpart
BOSON_FIXED = {"encoder_hidden_size": 64, "decoder_hidden_size": 1024}
SEMANTIC_FIXED = {"kernel_size": 3, "channel_ratios": [1, 1], "strides": [1, 1], "block_dilations": [1, 1],
                  "unit_kernel_size": 3, "downsample_factor": 320}
SEMANTIC_DIM = 768
INNER = ["snake1", "conv1", "snake2", "conv2"]
SEMANTIC_DIR = "semantic_model"  # where a converted tokenizer keeps its HuBERT (codec.py loads it from there)


# boson's DAC stacks -> native: (native prefix, block-level layers by index, res-unit indices, their offset)
_ACOUSTIC = {"encoder.block": ("acoustic_encoder", {"3": "snake1", "4": "conv1"}, range(0, 3), 1),
             "decoder_2.model": ("acoustic_decoder", {"0": "snake1", "1": "conv_t1"}, range(2, 5), -1)}


def _acoustic_name(key: str, blocks: int) -> str | None:
    for boson, (native, layers, units, offset) in _ACOUSTIC.items():
        m = re.match(rf"^{re.escape(boson)}\.(\d+)(\..*)?$", key)
        if not m:
            continue
        i, rest = int(m[1]), m[2] or ""
        ends = {0: "conv1", blocks + 1: "snake1", blocks + 2: "conv2"}  # the stack's first conv, last snake + conv
        if i in ends:
            return f"{native}.{ends[i]}{rest}"
        sub = re.match(r"^\.block\.(\d+)(?:\.block\.(\d+))?(\..*)$", rest)
        if sub and sub[2] is None and sub[1] in layers:
            return f"{native}.block.{i - 1}.{layers[sub[1]]}{sub[3]}"
        if sub and sub[2] is not None and int(sub[1]) in units:
            return f"{native}.block.{i - 1}.res_unit{int(sub[1]) + offset}.{INNER[int(sub[2])]}{sub[3]}"
    return None


def native_name(key: str, blocks: int) -> str:
    """The native name of a boson tokenizer weight (BLOCKS: the number of down/upsampling ratios)."""
    if key.startswith("semantic_model."):
        return key
    if (name := _acoustic_name(key, blocks)) is not None:
        return name
    if key.startswith("quantizer.vq.layers."):
        return key.replace("quantizer.vq.layers.", "quantizer.quantizers.", 1).replace("._codebook.", ".codebook.")
    for old, new in (("fc_prior.", "fc."), ("fc_post1.", "fc1."), ("fc_post2.", "fc2.")):
        if key.startswith(old):
            return new + key[len(old):]
    if key.startswith(("encoder_semantic.", "decoder_semantic.")):
        return re.sub(r"\.(conv|conv1|conv2)\.conv\.", r".\1.", key)
    raise CheckpointError(f"audio tokenizer weight {key!r} has no counterpart in the transformers-native layout")


def fold(g: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """torch's weight norm over every dim but the first: the weight a (g, v) pair stands for."""
    return g * v / v.norm(dim=tuple(range(1, v.dim())), keepdim=True)


def unfold(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return w.norm(dim=tuple(range(1, w.dim())), keepdim=True), w.clone()


def _check_native_config(config: dict, where: str) -> None:
    acoustic = config.get("acoustic_model_config") or {}
    semantic = config.get("semantic_model_config") or {}
    problems = [f"acoustic_model_config.{k} {acoustic.get(k)} (boson_multimodal: {v})"
                for k, v in BOSON_FIXED.items() if acoustic.get(k, v) != v]
    if list(acoustic.get("downsampling_ratios", [])) != list(acoustic.get("upsampling_ratios", [])):
        problems.append(f"downsampling_ratios {acoustic.get('downsampling_ratios')} differ from upsampling_ratios "
                        f"{acoustic.get('upsampling_ratios')} (boson_multimodal uses one list for both)")
    if semantic.get("model_type", "hubert") != "hubert" or semantic.get("hidden_size", SEMANTIC_DIM) != SEMANTIC_DIM:
        problems.append(f"semantic_model_config {semantic.get('model_type')} of width {semantic.get('hidden_size')} "
                        f"(boson_multimodal: a HuBERT of width {SEMANTIC_DIM})")
    for k, v in SEMANTIC_FIXED.items():
        if k in config and (list(config[k]) if isinstance(v, list) else config[k]) != v:
            problems.append(f"{k} {config[k]} (boson_multimodal: {v})")
    if problems:
        raise CheckpointError(f"{where}: this transformers-native audio tokenizer has no boson_multimodal "
                              f"counterpart: " + "; ".join(problems))


def boson_tokenizer_config(native: dict, n_q: int) -> dict:
    acoustic = native["acoustic_model_config"]
    d = acoustic["hidden_size"]
    out = {"n_filters": 32, "D": d, "target_bandwidths": list(native.get("target_bandwidths", [0.5, 1, 1.5, 2, 4])),
           "ratios": list(acoustic["downsampling_ratios"]), "sample_rate": native.get("sample_rate", 24000),
           "bins": native.get("codebook_size", 1024), "n_q": n_q, "semantic_techer": "hubert_base_general",
           "semantic_sample_rate": native.get("semantic_sample_rate", 16000)}
    if native.get("codebook_dim", d + SEMANTIC_DIM) != d + SEMANTIC_DIM:
        out["codebook_dim"] = native["codebook_dim"]
    return out


def native_tokenizer_to_boson(src: Path, out: Path) -> None:
    """A native audio tokenizer directory as boson_multimodal's layout in OUT (config.json, model.pth) with its
    HuBERT in OUT/semantic_model (config.json, model.safetensors)."""
    from safetensors.torch import save_file

    from higgs_ds.checkpoints.checkpoint_dir import Checkpoint, semantic_model_at
    from higgs_ds.checkpoints.native import WeightFiles

    src, out = Path(src), Path(out)
    native = read_json(src / "config.json")
    _check_native_config(native, str(src / "config.json"))
    weights = WeightFiles(src)
    keys = set(weights.keys())
    n_q = len({k.split(".")[2] for k in keys if k.startswith("quantizer.quantizers.")})
    config = boson_tokenizer_config(native, n_q)
    semantic_dir = out / SEMANTIC_DIR
    semantic_dir.mkdir(parents=True)
    semantic_config = {**native["semantic_model_config"], "model_type": "hubert", "architectures": ["HubertModel"]}
    (semantic_dir / "config.json").write_text(json.dumps(semantic_config, indent=2))
    save_file({k[len("semantic_model."):]: weights.get(k).contiguous() for k in sorted(keys)
               if k.startswith("semantic_model.")}, str(semantic_dir / "model.safetensors"), metadata={"format": "pt"})

    from boson_multimodal.audio_processing.higgs_audio_tokenizer import HiggsAudioTokenizer

    with semantic_model_at("bosonai/hubert_base", Checkpoint("semantic_model", semantic_dir)):
        target = HiggsAudioTokenizer(**config, device="cpu")
    blocks = len(config["ratios"])
    state, used = {}, set()
    for key, param in target.state_dict().items():
        if key.endswith(".weight_v"):
            continue
        if key.endswith(".weight_g"):
            base = key[:-len("_g")]
            name = native_name(base, blocks)
            if name not in keys:
                raise CheckpointError(f"{src}: no weight {name!r} (for boson's {base}_g/_v)")
            state[key], state[base + "_v"] = unfold(weights.get(name).float())
        else:
            name = native_name(key, blocks)
            if name not in keys:
                raise CheckpointError(f"{src}: no weight {name!r} (for boson's {key})")
            state[key] = weights.get(name)
        used.add(name)
    for name in sorted(keys - used):
        if re.search(r"\.project_(in|out)\.(weight|bias)$", name):
            _require_identity(weights.get(name), name, src)
        elif name != "semantic_model.masked_spec_embed":
            raise CheckpointError(f"{src}: weight {name!r} is not part of a Higgs audio tokenizer of this config.json")
    try:
        target.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{src}: the converted weights do not fit boson_multimodal's HiggsAudioTokenizer: "
                              f"{str(e).splitlines()[0][:300]}") from None
    (out / "config.json").write_text(json.dumps(config, indent=2))
    torch.save(state, out / "model.pth")


def _require_identity(t: torch.Tensor, name: str, src: Path) -> None:
    """boson has no projection where the codebook is as wide as the quantizer input: the native one must be I, 0."""
    want = torch.eye(*t.shape, dtype=t.dtype) if t.dim() == 2 else torch.zeros_like(t)
    if not torch.equal(t, want):
        raise CheckpointError(f"{src}: {name} is not the identity, but boson_multimodal's tokenizer of this width "
                              f"has no projection there")


def boson_tokenizer_to_native(src: Path, out: Path, semantic_dir: Path) -> None:
    """boson's tokenizer (config.json + model.pth) in the native layout in OUT: config.json for
    HiggsAudioV2TokenizerConfig and model.safetensors, with the HuBERT of SEMANTIC_DIR inside."""
    from safetensors.torch import save_file

    src, out, semantic_dir = Path(src), Path(out), Path(semantic_dir)
    boson = read_json(src / "config.json")
    state = torch.load(src / "model.pth", map_location="cpu", weights_only=True)
    blocks = len(boson["ratios"])
    d = boson["D"]
    width = d + SEMANTIC_DIM
    codebook_dim = boson.get("codebook_dim") or width
    native = {}
    for key, value in state.items():
        if key.endswith(".weight_v") or key == "semantic_model.masked_spec_embed":
            continue
        if key.endswith(".weight_g"):
            base = key[:-len("_g")]
            native[native_name(base, blocks)] = fold(value, state[base + "_v"])
        else:
            native[native_name(key, blocks)] = value
    n_q = boson["n_q"]
    if codebook_dim == width:  # boson's identity projections, spelled out for the native class
        for q in range(n_q):
            for proj in ("project_in", "project_out"):
                native[f"quantizer.quantizers.{q}.{proj}.weight"] = torch.eye(width)
                native[f"quantizer.quantizers.{q}.{proj}.bias"] = torch.zeros(width)
    frame_rate = math.ceil(boson["sample_rate"] / math.prod(boson["ratios"]))
    top = n_q * frame_rate * math.ceil(math.log2(boson["bins"])) / 1000  # the bandwidth of all n_q codebooks
    bands = [b for b in boson.get("target_bandwidths", [top]) if b < top] + [top]
    semantic = read_json(semantic_dir / "config.json")
    semantic = {k: v for k, v in semantic.items() if k not in ("architectures", "transformers_version", "torch_dtype",
                                                             "_name_or_path")}
    config = {"architectures": ["HiggsAudioV2TokenizerModel"], "model_type": NATIVE_TOKENIZER_TYPE,
              "sample_rate": boson["sample_rate"], "codebook_size": boson["bins"], "codebook_dim": codebook_dim,
              "target_bandwidths": bands, "semantic_sample_rate": boson.get("semantic_sample_rate", 16000),
              "downsample_factor": 320,
              "acoustic_model_config": {"model_type": "dac", "encoder_hidden_size": 64,
                                        "downsampling_ratios": list(boson["ratios"]), "decoder_hidden_size": 1024,
                                        "upsampling_ratios": list(boson["ratios"]), "hidden_size": d},
              "semantic_model_config": {**semantic, "mask_time_prob": 0.0}}
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in native.items()}, str(out / "model.safetensors"),
              metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(config, indent=2))
