"""A tiny, randomly initialised but real Higgs-Audio stack built locally (no download), for tests and the demo."""

from __future__ import annotations

import json
import os
from pathlib import Path

SPECIAL_TOKENS = [
    "<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
    "<|eom_id|>", "<|recipient|>", "<|AUDIO|>", "<|AUDIO_OUT|>", "<|audio_bos|>", "<|audio_eos|>",
    "<|audio_out_bos|>", "<|pad|>",
]
TEXT_VOCAB = 512
# Higgs TTS 3's tokenizer is Qwen2's with its prompt's tokens added (data/prompt_formats.py)
V3_SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|tts|>", "<|ref_text|>", "<|ref_audio|>",
                     "<|text|>", "<|audio|>"]
V3_LICENSE = ("A stand-in, for tests, of the licence file a Higgs TTS 3 checkpoint ships (the Higgs TTS 3 Research "
              "and Non-Commercial License).\n")
HUBERT_REPO = "bosonai/hubert_base"
HUBERT_COMMIT = "0" * 40
FIXTURES_VERSION = 8  # bump when what build_fixtures writes changes

_CORPUS = """system user assistant Generate audio following instruction. The quick brown fox jumps over the lazy dog.
Speak in the voice of the reference speaker. She sells sea shells by the sea shore. Hello world, this is a test.
A journey of a thousand miles begins with a single step. Every morning the train leaves the station at seven.
numbers one two three four five six seven eight nine ten. Please call Stella and ask her to bring these things."""


def hf_home(out: str | Path) -> Path:
    """The HF_HOME that holds the fixture's semantic model (the audio tokenizer loads `bosonai/hubert_base` from it)."""
    return Path(out) / "hf_home"


def offline_env(out: str | Path) -> dict[str, str]:
    """Environment under which the fixture audio tokenizer loads with no network."""
    return {"HF_HOME": str(hf_home(out)), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def _bpe_tokenizer(special_tokens: list[str]):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=TEXT_VOCAB, special_tokens=special_tokens,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(_CORPUS.split("\n") * 4, trainer=trainer)
    return tok


def build_text_tokenizer(out: Path):
    from transformers import PreTrainedTokenizerFast

    tok = _bpe_tokenizer(SPECIAL_TOKENS)
    # The corpus yields fewer merges than TEXT_VOCAB; reserved special tokens fill the rest, as in Llama 3, so the
    # tokenizer and the model's text vocabulary have the same size (generation checks sampled ids against it).
    tok.add_special_tokens([f"<|reserved_special_token_{i}|>" for i in range(TEXT_VOCAB - tok.get_vocab_size())])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|begin_of_text|>", eos_token="<|end_of_text|>",
                                   pad_token="<|pad|>")
    fast.save_pretrained(out)
    from higgs_ds.checkpoints.layouts import fix_tokenizer_config

    fix_tokenizer_config(out)  # readable by transformers 4.x too (the oracle venv)
    return fast


def build_v3_model(out: Path, seed: int = 0, real_size: bool = False) -> Path:
    """A Higgs TTS 3 checkpoint as the hub ships one: config.json, model.safetensors (the real key names, the tied
    copies, a stand-in for the bundled codec), the text tokenizer with the v3 prompt's tokens, a licence file. Tiny
    (fp32), or REAL_SIZE: the real architecture (4.04B) in bf16, 8.9 GB on disk (the tied text head stored as a
    copy, as the hub's checkpoint stores it)."""
    import torch
    from transformers import PreTrainedTokenizerFast

    from higgs_ds.models.higgs_v3.fixture import REAL_SIZE_CONFIG, build_checkpoint

    if real_size:
        build_checkpoint(out, seed, REAL_SIZE_CONFIG, torch.bfloat16)
    else:
        build_checkpoint(out, seed)
    fast = PreTrainedTokenizerFast(tokenizer_object=_bpe_tokenizer(V3_SPECIAL_TOKENS), eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>")
    fast.save_pretrained(out)
    (out / "LICENSE").write_text(V3_LICENSE)
    return out


def tiny_arch(ids: dict[str, int]) -> dict:
    """The tiny model's config in boson_multimodal's terms (HiggsAudioConfig), special token ids from IDS."""
    text_config = dict(model_type="llama", vocab_size=TEXT_VOCAB, hidden_size=64, intermediate_size=128,
                       num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                       max_position_embeddings=4096, bos_token_id=ids["<|begin_of_text|>"],
                       eos_token_id=ids["<|end_of_text|>"], pad_token_id=ids["<|end_of_text|>"])
    return dict(
        text_config=text_config, audio_adapter_type="dual_ffn_fast_forward", audio_ffn_hidden_size=64,
        audio_ffn_intermediate_size=128, audio_dual_ffn_layers=[0, 1], use_delay_pattern=True, skip_audio_tower=True,
        encode_whisper_embed=False, encode_audio_in_tokens=True, audio_num_codebooks=8, audio_codebook_size=1024,
        audio_stream_bos_id=1024, audio_stream_eos_id=1025, audio_in_token_idx=ids["<|AUDIO|>"],
        audio_out_token_idx=ids["<|AUDIO_OUT|>"], pad_token_id=ids["<|end_of_text|>"],
        audio_out_bos_token_id=ids["<|audio_out_bos|>"], audio_eos_token_id=ids["<|audio_eos|>"],
        torch_dtype="float32")


def build_model(out: Path, tokenizer_dir: Path, seed: int = 0) -> Path:
    """The tiny model with seeded random weights (transformers' HiggsAudioV2ForConditionalGeneration and its own
    init), written in boson_multimodal's layout, as the pinned hub revision holds Boson's model."""
    import torch

    from higgs_ds.checkpoints.native import native_config, special_token_ids

    ids = _ids(tokenizer_dir)
    native = native_config(tiny_arch(ids), special_token_ids(tokenizer_dir))
    torch.manual_seed(seed)
    model = _native_model(native)
    _save_boson(model, native, tokenizer_dir, out)
    return out


def _ids(tokenizer_dir: Path) -> dict[str, int]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    return {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}


def _native_model(native: dict, device: str = "cpu"):
    from transformers import HiggsAudioV2Config, HiggsAudioV2ForConditionalGeneration

    return HiggsAudioV2ForConditionalGeneration(HiggsAudioV2Config.from_dict(native), use_text_head=True).to(device)


def _save_boson(model, native: dict, tokenizer_dir: Path, out: Path) -> None:
    from higgs_ds.checkpoints.native import save_boson_state

    save_boson_state({k: v.detach().contiguous() for k, v in model.state_dict().items()}, native,
                     Path(tokenizer_dir), Path(out))


V2_ARCH = dict(  # Higgs-Audio v2 generation 3B base, 5.77B: Llama-3.2-3B backbone, a DualFFN audio path in 28 layers
    text_config=dict(model_type="llama", vocab_size=128256, hidden_size=3072, intermediate_size=8192,
                     num_hidden_layers=28, num_attention_heads=24, num_key_value_heads=8, head_dim=128,
                     max_position_embeddings=131072, rope_theta=500000.0, rms_norm_eps=1e-5,
                     rope_scaling={"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                                   "original_max_position_embeddings": 8192, "rope_type": "llama3"},
                     tie_word_embeddings=False),
    audio_adapter_type="dual_ffn_fast_forward", audio_ffn_hidden_size=3072, audio_ffn_intermediate_size=8192,
    audio_dual_ffn_layers=list(range(28)), use_delay_pattern=True, skip_audio_tower=True, encode_whisper_embed=False,
    encode_audio_in_tokens=True, audio_num_codebooks=8, audio_codebook_size=1024, audio_stream_bos_id=1024,
    audio_stream_eos_id=1025, audio_in_token_idx=128015, audio_out_token_idx=128016, pad_token_id=128001,
    audio_out_bos_token_id=128013, audio_eos_token_id=128012)


LLAMA3_AUDIO_DELAY_ID, LLAMA3_EOT_ID = 128014, 128009  # <|reserved_special_token_6|>, <|eot_id|>


def random_model(arch: dict, device: str = "cpu", seed: int = 0, ids: dict[str, int] | None = None):
    """transformers' HiggsAudioV2ForConditionalGeneration (text head included) for ARCH (a boson_multimodal config)
    in bf16 with seeded random weights (fill_random). Returns (model, its native config)."""
    import torch
    from transformers.initialization import no_init_weights

    from higgs_ds.checkpoints.native import AUDIO_DELAY_TOKEN, AUDIO_EOS_TOKEN, AUDIO_IN_TOKEN, EOT_TOKEN, \
        native_config
    from higgs_ds.models.random_weights import fill_random

    # the text tokenizer's ids the native config names; by default those of Boson's (Llama 3's) tokenizer
    ids = ids or {AUDIO_IN_TOKEN: arch["audio_in_token_idx"], AUDIO_EOS_TOKEN: arch["audio_eos_token_id"],
                  AUDIO_DELAY_TOKEN: LLAMA3_AUDIO_DELAY_ID, EOT_TOKEN: LLAMA3_EOT_ID}
    native = native_config(json.loads(json.dumps(arch)), ids)
    torch.set_default_dtype(torch.bfloat16)  # built directly in bf16: an fp32 copy of 5.77B would need 23 GB
    try:
        with no_init_weights(), torch.device(device):
            model = _native_model(native, device)
    finally:
        torch.set_default_dtype(torch.float32)
    if device == "meta":  # the architecture alone, no values (bench/flops.py counts its FLOPs)
        return model, native
    return fill_random(model, seed), native


def build_full_size_model(out: Path, tokenizer_dir: Path, seed: int = 0, layout: str = "native") -> Path:
    """The v2 architecture at its real size (5.77B, bf16, random weights) in LAYOUT: "native" as the hub serves it
    at `main` (config.json, model-0000N-of-0000M.safetensors + index, generation_config.json), or "boson" as at the
    pinned boson revision; with the text tokenizer's files. Special token ids come from TOKENIZER_DIR, so shards
    built with that tokenizer train on it. About 11.5 GB on disk."""
    from higgs_ds.checkpoints.native import special_token_ids

    ids = _ids(tokenizer_dir)
    arch = json.loads(json.dumps(V2_ARCH))
    arch.update(audio_in_token_idx=ids["<|AUDIO|>"], audio_out_token_idx=ids["<|AUDIO_OUT|>"],
                pad_token_id=ids["<|end_of_text|>"], audio_out_bos_token_id=ids["<|audio_out_bos|>"],
                audio_eos_token_id=ids["<|audio_eos|>"], torch_dtype="bfloat16")
    arch["text_config"].update(bos_token_id=ids["<|begin_of_text|>"], eos_token_id=ids["<|end_of_text|>"],
                               pad_token_id=ids["<|end_of_text|>"])
    model, native = random_model(arch, seed=seed, ids=special_token_ids(tokenizer_dir))
    if layout == "boson":
        _save_boson(model, native, tokenizer_dir, out)
        return out
    from higgs_ds.checkpoints.native import copy_tokenizer, write_native_config

    model.save_pretrained(out, safe_serialization=True, max_shard_size="5GB")
    write_native_config(out, {**native, "dtype": "bfloat16"})
    copy_tokenizer(Path(tokenizer_dir), out)
    return out


def semantic_model_dir(out: str | Path) -> Path:
    """The fixture semantic model as a plain directory (what `--semantic-model` takes)."""
    return hf_home(out) / "hub" / ("models--" + HUBERT_REPO.replace("/", "--")) / "snapshots" / HUBERT_COMMIT


def hf_cache_snapshot(home: Path, repo_id: str, commit: str, ref: str | None = "main") -> Path:
    """The folder of REPO_ID at COMMIT in the Hugging Face cache under HOME (as a download would leave it), with REF
    pointing at it; the caller fills it."""
    repo_dir = Path(home) / "hub" / ("models--" + repo_id.replace("/", "--"))
    snap = repo_dir / "snapshots" / commit
    snap.mkdir(parents=True, exist_ok=True)
    if ref:
        (repo_dir / "refs").mkdir(parents=True, exist_ok=True)
        (repo_dir / "refs" / ref).write_text(commit)
    return snap


def build_semantic_model(home: Path, seed: int = 0) -> None:
    """A 1-layer random HuBERT in the Hugging Face cache layout under the repo id the audio tokenizer asks for."""
    import torch
    from transformers import HubertConfig, HubertModel

    snap = hf_cache_snapshot(home, HUBERT_REPO, HUBERT_COMMIT)
    torch.manual_seed(seed)
    HubertModel(HubertConfig(hidden_size=768, num_hidden_layers=1, num_attention_heads=4,
                             intermediate_size=256)).save_pretrained(snap, safe_serialization=True)


AUDIO_TOKENIZER_CONFIG = dict(n_filters=32, D=16, ratios=[8, 5, 4, 2, 3], sample_rate=24000, bins=1024, n_q=8,
                              semantic_techer="hubert_base_general", semantic_sample_rate=16000)


def build_audio_tokenizer(out: Path, seed: int = 0) -> None:
    import torch
    from boson_multimodal.audio_processing.higgs_audio_tokenizer import HiggsAudioTokenizer

    torch.manual_seed(seed)
    tok = HiggsAudioTokenizer(**AUDIO_TOKENIZER_CONFIG, device="cpu").eval()
    calibrate_codebooks(tok, seed)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(AUDIO_TOKENIZER_CONFIG, indent=2))
    torch.save(tok.state_dict(), out / "model.pth")


def speech_like(seconds: float, seed: int, sr: int = 24000):
    """A voiced, syllable-modulated harmonic signal with fricative-like noise bursts (float32 at SR)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    f0 = 120 + 60 * np.sin(2 * np.pi * 0.3 * t + rng.uniform(0, 6)) + 20 * rng.standard_normal()
    phase = 2 * np.pi * np.cumsum(f0) / sr
    voiced = sum(np.sin(k * phase) / k for k in range(1, 20))
    syllables = np.clip(np.sin(2 * np.pi * 4 * t + rng.uniform(0, 6)), 0, None)
    bursts = rng.standard_normal(len(t)) * (rng.uniform(size=len(t) // 2400 + 1).repeat(2400)[:len(t)] > 0.7)
    return (0.1 * (voiced * syllables + 0.3 * bursts)).astype(np.float32)


def calibrate_codebooks(tok, seed: int, clips: int = 8) -> None:
    """Give every RVQ codebook random entries spread like the residual it quantizes (per-dimension mean and std
    of the encoder's output on speech-like signals), and mark it initialised. Codes of speech then spread over
    the whole code space in every codebook, as a trained codec's do; boson's own k-means init would run on the
    first clip a process encodes (codes depending on order) and, on a few frames, collapse to a handful of codes."""
    import torch

    captured = []
    hook = tok.quantizer.register_forward_pre_hook(lambda module, args: captured.append(args[0].detach()))
    layers = [layer._codebook for layer in tok.quantizer.vq.layers]
    for codebook in layers:  # k-means init must not run on the calibration clips
        codebook.inited.fill_(1.0)
    try:
        for i in range(clips):
            tok.encode(speech_like(3.0, seed * 1000 + i), tok.sampling_rate)
    finally:
        hook.remove()
    residual = torch.cat([e[0].T for e in captured])  # (frames, quantizer dim)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in tok.quantizer.vq.layers:
            x = layer.project_in(residual)
            codebook = layer._codebook
            codebook.embed.copy_(x.mean(0) + x.std(0) * torch.randn(codebook.embed.shape, generator=gen))
            codebook.embed_avg.copy_(codebook.embed)
            residual = residual - layer.decode(layer.encode(residual.T.unsqueeze(0)))[0].T


def fixtures_current(out: str | Path) -> bool:
    """True when OUT holds fixtures that this version of build_fixtures would write."""
    stamp = Path(out) / "FIXTURES.json"
    return stamp.is_file() and json.loads(stamp.read_text()).get("version") == FIXTURES_VERSION


def ensure_fixtures(out: str | Path, seed: int = 0) -> Path:
    """The fixtures in OUT, rebuilt from scratch when missing or stale (same preconditions as build_fixtures)."""
    out = Path(out)
    if not fixtures_current(out):
        import shutil

        shutil.rmtree(out, ignore_errors=True)
        build_fixtures(out, seed)
    return out


def build_fixtures(out: str | Path, seed: int = 0) -> Path:
    """Write DIR/{model,tokenizer,audio_tokenizer,v3_model,hf_home}. Must run with offline_env(out) applied before
    transformers is imported (see `higgs-ds fixtures`), since the audio tokenizer reads HF_HOME at import time."""
    out = Path(out)
    home = hf_home(out)
    if Path(os.environ.get("HF_HOME", "")).resolve() != home.resolve():
        raise RuntimeError(f"set HF_HOME={home} (and HF_HUB_OFFLINE=1) before building fixtures into {out}")
    build_semantic_model(home, seed)
    build_text_tokenizer(out / "tokenizer")
    build_model(out / "model", out / "tokenizer", seed)
    build_audio_tokenizer(out / "audio_tokenizer", seed)
    build_v3_model(out / "v3_model", seed)
    (out / "FIXTURES.json").write_text(json.dumps({"version": FIXTURES_VERSION, "seed": seed,
                                                   "env": offline_env(out)}, indent=2))
    return out


WHISPER_SPECIAL_TOKENS = ["<|startoftranscript|>", "<|en|>", "<|transcribe|>", "<|translate|>", "<|nocaptions|>",
                          "<|notimestamps|>"]


def build_asr_model(out: str | Path, seed: int = 0) -> Path:
    """A tiny random Whisper (1 encoder and 1 decoder layer, a byte-level BPE of its own) that transformers' ASR
    pipeline loads and runs: the ASR scoring path end to end, offline. Its transcripts are noise."""
    import torch
    from tokenizers import ByteLevelBPETokenizer
    from transformers import (GenerationConfig, WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration,
                              WhisperProcessor, WhisperTokenizer)

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(_CORPUS.split("\n") * 4, vocab_size=400, min_frequency=1, show_progress=False)
    bpe.save_model(str(out))
    eot = "<|endoftext|>"
    tok = WhisperTokenizer(str(out / "vocab.json"), str(out / "merges.txt"), unk_token=eot, bos_token=eot,
                           eos_token=eot, pad_token=eot)
    tok.add_special_tokens({"additional_special_tokens": WHISPER_SPECIAL_TOKENS})
    WhisperProcessor(WhisperFeatureExtractor(feature_size=80), tok).save_pretrained(out)
    ids = {t: tok.convert_tokens_to_ids(t) for t in [eot] + WHISPER_SPECIAL_TOKENS}
    config = WhisperConfig(vocab_size=len(tok), num_mel_bins=80, d_model=64, encoder_layers=1, decoder_layers=1,
                           encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=128,
                           decoder_ffn_dim=128, max_source_positions=1500, max_target_positions=64,
                           decoder_start_token_id=ids["<|startoftranscript|>"], eos_token_id=ids[eot],
                           pad_token_id=ids[eot], bos_token_id=ids[eot])
    torch.manual_seed(seed)
    model = WhisperForConditionalGeneration(config)
    model.generation_config = GenerationConfig(
        decoder_start_token_id=ids["<|startoftranscript|>"], eos_token_id=ids[eot], pad_token_id=ids[eot],
        max_length=32, no_timestamps_token_id=ids["<|notimestamps|>"], lang_to_id={"<|en|>": ids["<|en|>"]},
        task_to_id={"transcribe": ids["<|transcribe|>"], "translate": ids["<|translate|>"]}, is_multilingual=True)
    model.save_pretrained(out, safe_serialization=True)
    return out
