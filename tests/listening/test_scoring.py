"""Scoring with real offline models: resemblyzer's speaker encoder and DNSMOS from their wheels, jiwer, and an ASR
pipeline on a tiny Whisper built locally with random weights."""

import itertools
import json

import numpy as np
import pytest


@pytest.fixture(scope="module")
def asr_model(tmp_path_factory):
    from higgs_ds.fixtures import build_asr_model

    return build_asr_model(tmp_path_factory.mktemp("whisper"))


def test_same_voice_is_more_similar_than_another_voice(speech):
    """12 espeak-ng clips, 3 voices: every pair of the same voice against every pair of different voices."""
    from higgs_ds.listening.scoring import Clip, SpeakerEncoder

    encoder = SpeakerEncoder()
    clips = {p.name: Clip.load(p) for p in sorted((speech / "wavs").glob("*.wav"))}
    same, other = [], []
    for a, b in itertools.combinations(sorted(clips), 2):
        (same if a[:4] == b[:4] else other).append(encoder.similarity(clips[a], clips[b]))
    assert len(same) == 18 and len(other) == 48
    assert np.mean(same) - np.mean(other) > 0.15, (np.mean(same), np.mean(other))
    assert np.mean(same) == pytest.approx(0.86, abs=0.04) and np.mean(other) == pytest.approx(0.66, abs=0.05)
    assert encoder.similarity(clips["spk0_000.wav"], clips["spk0_000.wav"]) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("reference, hypothesis, wer, cer", [
    ("the cat sat on the mat", "the cat sit on mat", 2 / 6, 5 / 22),
    ("Hello, World!", "hello world", 0.0, 0.0),
    ("one two three", "one two three four", 1 / 3, 5 / 13),
    ("Ça va? Très bien.", "ça va très bien", 0.0, 0.0),
    ("今天 天气 很好", "今天 天气 不好", 1 / 3, 1 / 8),
    ("a b", "", 1.0, 1.0),
])
def test_error_rates_are_exact_on_known_strings(reference, hypothesis, wer, cer):
    from higgs_ds.listening.scoring import error_rates

    assert error_rates(reference, hypothesis) == pytest.approx((wer, cer))


def test_error_rates_refuse_an_empty_reference():
    from higgs_ds.listening.scoring import error_rates

    with pytest.raises(ValueError, match="empty after normalisation"):
        error_rates(" ?! ", "words")


def test_dnsmos_stays_in_range_and_prefers_speech_to_noise(speech):
    from higgs_ds.listening.scoring import Clip, Naturalness

    dnsmos = Naturalness()
    speech_scores = dnsmos(Clip.load(speech / "wavs" / "spk0_000.wav"))
    noise = dnsmos(Clip(np.random.default_rng(0).uniform(-0.5, 0.5, 48000).astype(np.float32), 16000))
    for scores in (speech_scores, noise):
        assert set(scores) == {"dnsmos", "dnsmos_sig", "dnsmos_bak"}
        assert all(1.0 <= v <= 5.0 for v in scores.values()), scores
    assert speech_scores["dnsmos"] > noise["dnsmos"] + 1.0


def test_dnsmos_with_our_thread_count_scores_as_speechmos_does(speech):
    """Naturalness opens speechmos's ONNX models with torch's thread count (1 here) instead of one per core; the
    scores are speechmos's own `run`'s."""
    import torch
    from speechmos import dnsmos as speechmos_dnsmos

    from higgs_ds.listening.scoring import Clip, Naturalness, resample

    clip = Clip.load(speech / "wavs" / "spk1_001.wav")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ours = Naturalness()
    finally:
        torch.set_num_threads(threads)
    assert ours._model.onnx_sess.get_session_options().intra_op_num_threads == 1
    theirs = speechmos_dnsmos.run(np.clip(resample(clip.wav, clip.sr, 16000), -1, 1), sr=16000)
    got = ours(clip)
    assert got["dnsmos"] == pytest.approx(float(theirs["ovrl_mos"]), abs=1e-5)
    assert got["dnsmos_sig"] == pytest.approx(float(theirs["sig_mos"]), abs=1e-5)
    assert got["dnsmos_bak"] == pytest.approx(float(theirs["bak_mos"]), abs=1e-5)


def test_asr_runs_end_to_end_on_a_tiny_whisper(asr_model, speech):
    """The ASR path (transformers pipeline, Whisper generation) on a random tiny Whisper: a transcript comes out
    and WER/CER are computed from it; without an ASR model they are not measured, never invented."""
    from higgs_ds.listening.scoring import Clip, Scorer, Transcriber, error_rates

    clip = Clip.load(speech / "wavs" / "spk0_000.wav")
    text = Transcriber(str(asr_model))(clip)
    assert isinstance(text, str)  # random weights: noise (or nothing), but real generation
    scorer = Scorer(asr_model=str(asr_model))
    row = scorer.score(clip, clip, "The quick brown fox jumps over the lazy dog.")
    assert row["asr_text"] == text
    assert (row["wer"], row["cer"]) == pytest.approx(error_rates("The quick brown fox jumps over the lazy dog.", text))
    assert row["similarity"] == pytest.approx(1.0, abs=1e-5) and 1 <= row["dnsmos"] <= 5
    assert scorer.describe()["asr_model"] == str(asr_model)

    plain = Scorer().score(clip, clip, "The quick brown fox.")
    assert plain["wer"] is None and plain["cer"] is None
    assert any("not measured" in n for n in plain["notes"])


def test_means_count_only_what_was_measured():
    from higgs_ds.listening.scoring import means

    rows = [{"similarity": 0.5, "wer": None, "seconds": 1.0}, {"similarity": 0.7, "wer": 0.2, "seconds": 3.0}]
    m = means(rows)
    assert m["similarity"] == pytest.approx(0.6) and m["similarity_n"] == 2
    assert m["wer"] == pytest.approx(0.2) and m["wer_n"] == 1
    assert m["dnsmos"] is None and m["dnsmos_n"] == 0
    json.dumps(m)
