"""How a record's text becomes token ids, per model family: Higgs-Audio v2 reads ChatML (boson_multimodal's
prepare_chatml_sample), Higgs TTS 3 its own prompt. The text tokenizer tells which: one with the v3 prompt's special
tokens is a v3 tokenizer. A shard set records the format its stored ids are in (build.json `prompt_format`).

A v3 prompt holds one target clip, at most one reference clip and the text it speaks:

    <|tts|> [<|ref_text|> REF_TEXT] <|ref_audio|> CLIP <|text|> TEXT <|audio|> CLIP

(zero-shot without the <|ref_*|> part). From a ChatML record: the target is its assistant audio at or after
start_index, TEXT the last user turn's text before it, the reference the one audio before it with REF_TEXT the user
text before that. The system turn has no place in the prompt and is left out; a record with more than one
reference, assistant text or no text for its target is rejected with the reason. Each CLIP is one marker id (-100)
that the v3 collator expands into the clip's delayed rows. Text gets no labels: the v3 text head is not used.
"""

from __future__ import annotations

from higgs_ds.data.chatml import RecordError, chatml_tokens, content_items

CHATML, TTS3 = "chatml", "tts3"
FORMATS = (CHATML, TTS3)
TTS3_SPECIAL_TOKENS = ("<|tts|>", "<|ref_text|>", "<|ref_audio|>", "<|text|>", "<|audio|>")
CLIP = -100  # the marker of an audio clip in a stored v3 prompt (the checkpoint's audio_token_id)
IGNORE = -100


def _token_id(tokenizer, token: str) -> int | None:
    """TOKEN's id, or None when the tokenizer lacks it (a lookup, not a copy of a 151k-entry vocabulary)."""
    i = tokenizer.convert_tokens_to_ids(token)
    return None if i is None or (i == tokenizer.unk_token_id and token != tokenizer.unk_token) else i


def prompt_format(tokenizer) -> str:
    """TTS3 for a text tokenizer that has all of the v3 prompt's special tokens, else CHATML."""
    return TTS3 if all(_token_id(tokenizer, t) is not None for t in TTS3_SPECIAL_TOKENS) else CHATML


def record_tokens(fmt: str, record: dict, n_audio: int, tokenizer) -> tuple[list[int], list[int]]:
    """(input ids, label ids) of a ChatML record (messages, start_index, speaker) in the prompt format FMT."""
    if fmt == CHATML:
        return chatml_tokens(record, n_audio, tokenizer)
    if fmt == TTS3:
        ids = tts3_tokens(record, n_audio, tokenizer)
        return ids, [IGNORE] * len(ids)
    raise ValueError(f"unknown prompt format {fmt!r} (one of {', '.join(FORMATS)})")


def tts3_ids(tokenizer) -> dict[str, int]:
    """The tokenizer's ids of the v3 prompt's special tokens."""
    ids = {t: _token_id(tokenizer, t) for t in TTS3_SPECIAL_TOKENS}
    missing = [t for t, i in ids.items() if i is None]
    if missing:
        raise RecordError(f"the text tokenizer has no {missing[0]} token: not a Higgs TTS 3 tokenizer")
    return ids


def prompt_ids(ids: dict[str, int], text: list[int], ref_text: list[int] | None = None, reference: bool = True,
               placeholder: int = CLIP) -> list[int]:
    """A stored v3 prompt for TEXT (token ids), cloning a reference clip (with its transcript REF_TEXT, if given) or
    zero-shot; IDS maps the special tokens to the tokenizer's ids."""
    out = [ids["<|tts|>"]]
    if reference:
        if ref_text:
            out += [ids["<|ref_text|>"], *ref_text]
        out += [ids["<|ref_audio|>"], placeholder]
    return out + [ids["<|text|>"], *text, ids["<|audio|>"], placeholder]


def tts3_parts(record: dict) -> tuple[str, str | None, bool]:
    """(TEXT, REF_TEXT or None, whether there is a reference clip) of a ChatML record, as the module says."""
    start = record.get("start_index") or 0
    user_text: str | None = None  # the latest user text not yet spoken by an audio item
    spoken: list[tuple[str | None, int, str]] = []  # (text before it, message index, role) of each audio item
    for i, message in enumerate(record["messages"]):
        items = content_items(message["content"])
        if message["role"] == "assistant" and any(it["type"] == "text" for it in items):
            raise RecordError(f"messages[{i}]: Higgs TTS 3's prompt has no assistant text")
        if message["role"] == "system":
            continue
        for item in items:
            if item["type"] == "text":
                user_text = item["text"] if user_text is None else f"{user_text} {item['text']}"
            else:
                spoken.append((user_text, i, message["role"]))
                user_text = None
    targets = [k for k, (_, i, role) in enumerate(spoken) if role == "assistant" and i >= start]
    if len(targets) != 1 or targets[0] != len(spoken) - 1:
        raise RecordError(f"Higgs TTS 3's prompt has one target clip, the last audio; this record has "
                          f"{len(targets)} assistant audio item(s) at or after start_index {start}"
                          + ("" if len(targets) != 1 else " and audio after it"))
    if len(spoken) > 2:
        raise RecordError(f"Higgs TTS 3's prompt holds one reference clip; this record has {len(spoken) - 1} (build "
                          f"with --refs-per-target 1)")
    text = spoken[-1][0]
    if not text:
        raise RecordError("no user text before the target audio: nothing for Higgs TTS 3 to speak")
    return text, spoken[0][0] if len(spoken) == 2 else None, len(spoken) == 2


def tts3_tokens(record: dict, n_audio: int, tokenizer) -> list[int]:
    text, ref_text, reference = tts3_parts(record)
    if n_audio != 1 + reference:
        raise RecordError(f"the prompt has {1 + reference} audio clip(s), the record {n_audio}")

    def encode(s: str | None) -> list[int] | None:
        return tokenizer.encode(s, add_special_tokens=False) if s else None

    return prompt_ids(tts3_ids(tokenizer), encode(text), encode(ref_text), reference)


def count_text_tokens(fmt: str, record, tokenizer) -> int:
    """Stored token ids of a chatml.Record in FMT (a v3 prompt's clip markers included)."""
    return len(record_tokens(fmt, record.to_json(), len(record.audio), tokenizer)[0])
