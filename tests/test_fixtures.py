"""The tiny fixtures load through boson_multimodal's real loaders, and the real tokenizer path encodes speech."""

import math

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.oracle  # boson_multimodal's model: runs in .venv-boson


def test_fixtures_load_through_boson_loaders(fixtures_dir):
    from boson_multimodal.model.higgs_audio import HiggsAudioModel
    from transformers import AutoTokenizer

    from higgs_ds.data.codec import load_audio_tokenizer

    model = HiggsAudioModel.from_pretrained(fixtures_dir / "model", torch_dtype=torch.bfloat16)
    assert next(model.parameters()).dtype == torch.bfloat16
    assert model.config.audio_num_codebooks == 8 and model.config.use_delay_pattern
    names = {n for n, _ in model.named_modules()}
    assert {"layers.0.audio_mlp.gate_proj", "audio_decoder_proj.audio_lm_head", "layers.1.self_attn.q_proj"} <= names
    tok = AutoTokenizer.from_pretrained(fixtures_dir / "tokenizer")
    for special in ("<|AUDIO|>", "<|AUDIO_OUT|>", "<|audio_out_bos|>", "<|eot_id|>"):
        ids = tok.encode(special, add_special_tokens=False)
        assert len(ids) == 1 and ids[0] < model.config.text_config.vocab_size
    assert tok.convert_tokens_to_ids("<|AUDIO_OUT|>") == model.config.audio_out_token_idx
    audio_tok = load_audio_tokenizer(str(fixtures_dir / "audio_tokenizer"), device="cpu")
    assert audio_tok.num_codebooks == 8 and audio_tok.sampling_rate == 24000


def test_espeak_speech_encodes_to_25_frames_per_second(fixtures_dir, speech):
    from higgs_ds.audio import read_audio
    from higgs_ds.data.codec import AudioEncoder

    enc = AudioEncoder(str(fixtures_dir / "audio_tokenizer"), cache_dir=None, device="cpu")
    wav_path = speech / "wavs" / "spk1_000.wav"
    wav, sr = read_audio(wav_path)
    codes, digest = enc.encode_file(wav_path)
    seconds = len(wav) / sr
    assert codes.dtype == np.int16 and codes.shape[0] == 8
    assert abs(codes.shape[1] - math.ceil(seconds * 25)) <= 1, (codes.shape, seconds)
    assert 0 <= codes.min() and codes.max() < 1024
    again, _ = enc.encode_file(wav_path)
    np.testing.assert_array_equal(codes, again)  # encoding is deterministic: shards can be rebuilt byte-identically
    other, _ = enc.encode_file(speech / "wavs" / "spk2_001.wav")
    assert other.shape != codes.shape or not np.array_equal(other, codes)


def test_audio_tokenizer_with_mismatched_weights_is_an_error(fixtures_dir, tmp_path):
    import shutil

    import pytest

    from higgs_ds.data.codec import load_audio_tokenizer

    state = torch.load(fixtures_dir / "audio_tokenizer" / "model.pth", weights_only=True)
    dropped = sorted(state)[0]
    del state[dropped]  # boson's loader (strict=False) would silently keep this weight random
    torch.save(state, tmp_path / "model.pth")
    shutil.copy(fixtures_dir / "audio_tokenizer" / "config.json", tmp_path / "config.json")
    with pytest.raises(RuntimeError, match="1 missing keys") as err:
        load_audio_tokenizer(str(tmp_path), device="cpu")
    assert dropped in str(err.value) and str(tmp_path) in str(err.value)


def test_fixture_codes_use_the_whole_code_space(fixtures_dir, speech):
    """Every codebook of the fixture tokenizer spreads espeak speech over its 1024 codes, as a trained codec does
    (a mismatch between shards and a model's codebook size cannot hide in a corner of the code space)."""
    from higgs_ds.data.codec import AudioEncoder

    enc = AudioEncoder(str(fixtures_dir / "audio_tokenizer"), cache_dir=None, device="cpu")
    codes = np.concatenate([enc.encode_file(p)[0] for p in sorted((speech / "wavs").glob("*.wav"))], axis=1)
    assert codes.shape[0] == 8 and codes.shape[1] > 800
    distinct = [len(np.unique(c)) for c in codes]
    assert min(distinct) > 150, distinct
    assert codes.min() < 20 and codes.max() > 1000
    top_share = [np.bincount(c).max() / len(c) for c in codes]
    assert max(top_share) < 0.2, top_share  # no codebook collapses onto one code


def test_text_tokenizer_fills_the_model_vocabulary(fixtures_dir):
    from boson_multimodal.model.higgs_audio import HiggsAudioConfig
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(fixtures_dir / "tokenizer")
    assert len(tok) == HiggsAudioConfig.from_pretrained(fixtures_dir / "model").text_config.vocab_size == 512
