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
HUBERT_REPO = "bosonai/hubert_base"
HUBERT_COMMIT = "0" * 40
FIXTURES_VERSION = 2  # bump when what build_fixtures writes changes

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


def build_text_tokenizer(out: Path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=TEXT_VOCAB, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(_CORPUS.split("\n") * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|begin_of_text|>", eos_token="<|end_of_text|>",
                                   pad_token="<|pad|>")
    fast.save_pretrained(out)
    return fast


def build_model(out: Path, tokenizer, seed: int = 0):
    import torch
    from boson_multimodal.model.higgs_audio import HiggsAudioConfig, HiggsAudioModel

    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    text_config = dict(model_type="llama", vocab_size=TEXT_VOCAB, hidden_size=64, intermediate_size=128,
                       num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                       max_position_embeddings=4096, bos_token_id=ids["<|begin_of_text|>"],
                       eos_token_id=ids["<|end_of_text|>"], pad_token_id=ids["<|end_of_text|>"])
    config = HiggsAudioConfig(
        text_config=text_config, audio_adapter_type="dual_ffn_fast_forward", audio_ffn_hidden_size=64,
        audio_ffn_intermediate_size=128, audio_dual_ffn_layers=[0, 1], use_delay_pattern=True, skip_audio_tower=True,
        encode_whisper_embed=False, encode_audio_in_tokens=True, audio_num_codebooks=8, audio_codebook_size=1024,
        audio_stream_bos_id=1024, audio_stream_eos_id=1025, audio_in_token_idx=ids["<|AUDIO|>"],
        audio_out_token_idx=ids["<|AUDIO_OUT|>"], pad_token_id=ids["<|end_of_text|>"],
        audio_out_bos_token_id=ids["<|audio_out_bos|>"], audio_eos_token_id=ids["<|audio_eos|>"],
    )
    torch.manual_seed(seed)
    model = HiggsAudioModel(config)
    model.save_pretrained(out, safe_serialization=True)
    return model


def build_semantic_model(home: Path, seed: int = 0) -> None:
    """A 1-layer random HuBERT in the Hugging Face cache layout under the repo id the audio tokenizer asks for."""
    import torch
    from transformers import HubertConfig, HubertModel

    repo_dir = home / "hub" / ("models--" + HUBERT_REPO.replace("/", "--"))
    snap = repo_dir / "snapshots" / HUBERT_COMMIT
    snap.mkdir(parents=True, exist_ok=True)
    (repo_dir / "refs").mkdir(parents=True, exist_ok=True)
    (repo_dir / "refs" / "main").write_text(HUBERT_COMMIT)
    torch.manual_seed(seed)
    HubertModel(HubertConfig(hidden_size=768, num_hidden_layers=1, num_attention_heads=4,
                             intermediate_size=256)).save_pretrained(snap, safe_serialization=True)


AUDIO_TOKENIZER_CONFIG = dict(n_filters=32, D=16, ratios=[8, 5, 4, 2, 3], sample_rate=24000, bins=1024, n_q=8,
                              semantic_techer="hubert_base_general", semantic_sample_rate=16000)


def build_audio_tokenizer(out: Path, seed: int = 0) -> None:
    import torch
    from boson_multimodal.audio_processing.higgs_audio_tokenizer import HiggsAudioTokenizer

    torch.manual_seed(seed)
    tok = HiggsAudioTokenizer(**AUDIO_TOKENIZER_CONFIG, device="cpu")
    # The RVQ codebooks k-means-initialise on the first clip they see; do it here on seeded noise, or every
    # process would get codebooks (and codes) that depend on whichever clip it happened to encode first.
    gen = torch.Generator().manual_seed(seed)
    tok.encode((0.1 * torch.randn(48000, generator=gen)).numpy(), 24000)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(AUDIO_TOKENIZER_CONFIG, indent=2))
    torch.save(tok.state_dict(), out / "model.pth")


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
    """Write DIR/{model,tokenizer,audio_tokenizer,hf_home}. Must run with offline_env(out) applied before
    transformers is imported (see `higgs-ds fixtures`), since the audio tokenizer reads HF_HOME at import time."""
    out = Path(out)
    home = hf_home(out)
    if Path(os.environ.get("HF_HOME", "")).resolve() != home.resolve():
        raise RuntimeError(f"set HF_HOME={home} (and HF_HUB_OFFLINE=1) before building fixtures into {out}")
    build_semantic_model(home, seed)
    tokenizer = build_text_tokenizer(out / "tokenizer")
    build_model(out / "model", tokenizer, seed)
    build_audio_tokenizer(out / "audio_tokenizer", seed)
    (out / "FIXTURES.json").write_text(json.dumps({"version": FIXTURES_VERSION, "seed": seed,
                                                   "env": offline_env(out)}, indent=2))
    return out
