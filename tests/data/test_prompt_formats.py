"""A ChatML record as Higgs TTS 3's prompt, with the tiny v3 tokenizer: the ids by hand, and the records the prompt
cannot hold refused with the reason."""

import re

import pytest

from higgs_ds.data.chatml import RecordError
from higgs_ds.data.prompt_formats import CHATML, TTS3, prompt_format, record_tokens


@pytest.fixture(scope="module")
def v3_tokenizer(fixtures_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(fixtures_dir / "v3_model"))


def clip(path):
    return {"role": "assistant", "content": {"type": "audio", "audio_url": path}}


def test_a_cloning_record_becomes_the_v3_prompt(v3_tokenizer, fixtures_dir):
    from transformers import AutoTokenizer

    tok = v3_tokenizer
    assert prompt_format(tok) == TTS3
    assert prompt_format(AutoTokenizer.from_pretrained(str(fixtures_dir / "tokenizer"))) == CHATML
    special = {t: tok.convert_tokens_to_ids(t) for t in ("<|tts|>", "<|ref_text|>", "<|ref_audio|>", "<|text|>",
                                                         "<|audio|>")}
    ref, text = tok.encode("Hello world", add_special_tokens=False), tok.encode("The quick brown fox",
                                                                                add_special_tokens=False)
    record = {"messages": [{"role": "system", "content": "Generate audio following instruction."},
                           {"role": "user", "content": "Hello world"}, clip("a.wav"),
                           {"role": "user", "content": "The quick brown fox"}, clip("b.wav")], "start_index": 4}
    ids, labels = record_tokens(TTS3, record, 2, tok)
    assert ids == [special["<|tts|>"], special["<|ref_text|>"], *ref, special["<|ref_audio|>"], -100,
                   special["<|text|>"], *text, special["<|audio|>"], -100]
    assert labels == [-100] * len(ids)  # no text labels
    zero_shot = {"messages": [{"role": "user", "content": "The quick brown fox"}, clip("b.wav")], "start_index": 0}
    assert record_tokens(TTS3, zero_shot, 1, tok)[0] == [special["<|tts|>"], special["<|text|>"], *text,
                                                         special["<|audio|>"], -100]


@pytest.mark.parametrize("messages, start, reason", [
    ([{"role": "user", "content": "one"}, clip("a.wav"), {"role": "user", "content": "two"}, clip("b.wav"),
      {"role": "user", "content": "three"}, clip("c.wav")], 5,
     "Higgs TTS 3's prompt holds one reference clip; this record has 2 (build with --refs-per-target 1)"),
    ([{"role": "user", "content": "one"}, {"role": "assistant", "content": [{"type": "text", "text": "hi"},
                                                                            {"type": "audio", "audio_url": "a"}]}],
     1, "messages[1]: Higgs TTS 3's prompt has no assistant text"),
    ([clip("a.wav")], 0, "no user text before the target audio"),
    ([{"role": "user", "content": "one"}, clip("a.wav"), {"role": "user", "content": "two"}, clip("b.wav")], 0,
     "Higgs TTS 3's prompt has one target clip, the last audio; this record has 2 assistant audio item(s)"),
])
def test_records_the_v3_prompt_cannot_hold_are_refused_with_the_reason(v3_tokenizer, messages, start, reason):
    n_audio = sum(1 for m in messages if m["role"] == "assistant")
    with pytest.raises(RecordError, match=re.escape(reason)):
        record_tokens(TTS3, {"messages": messages, "start_index": start}, n_audio, v3_tokenizer)
