"""ChatML voice-cloning records: read manifests, validate them with clear errors, pair utterances into records."""

from __future__ import annotations

import hashlib
import json
import os
import random
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

ROLES = ("system", "user", "assistant")
RECORD_KEYS = {"messages", "speaker", "start_index", "misc"}
UTTERANCE_KEYS = {"audio", "text", "speaker"}
UTTERANCE_OPTIONAL = {"language", "duration"}  # what importers add where the corpus states it
DEFAULT_SYSTEM_PROMPT = "Generate audio following instruction."


class RecordError(ValueError):
    """A record is invalid; the message says what is wrong (the caller adds file and line)."""


@dataclass
class Record:
    """One training sample: a ChatML conversation plus where it came from.

    `audio` lists the audio files in the order they appear in `messages` (absolute paths); the messages keep the
    original `audio_url` strings."""

    index: int  # position in the dataset; shard = index // shard_size
    source: str  # "manifest.jsonl:LINE"
    messages: list[dict]
    start_index: int
    speaker: str | None
    audio: list[str] = field(default_factory=list)
    misc: dict | None = None

    def to_json(self) -> dict:
        out = {"messages": self.messages, "start_index": self.start_index, "speaker": self.speaker}
        if self.misc is not None:
            out["misc"] = self.misc
        return out


@dataclass
class Reject:
    source: str
    reason: str
    index: int | None = None
    unpaired_speaker: str | None = None  # set when the record is valid but its speaker has too few utterances

    def to_json(self) -> dict:
        out = {"source": self.source, "index": self.index, "reason": self.reason}
        return {**out, "unpaired_speaker": self.unpaired_speaker} if self.unpaired_speaker is not None else out

    @classmethod
    def from_json(cls, x: dict) -> "Reject":
        return cls(x["source"], x["reason"], x["index"], x.get("unpaired_speaker"))

    def __str__(self) -> str:
        return f"{self.source}: {self.reason}"


@dataclass(frozen=True)
class TextLimits:
    """Bounds on a record's text: an over-long transcript would make one sample cost minutes and gigabytes."""

    max_text_tokens: int = 2048  # ChatML tokens of the whole record (checked when a text tokenizer is given)
    max_chars_per_second: float = 40.0  # user-turn characters per second of the record's audio (0: no bound)


def user_text_chars(record: Record) -> int:
    """Characters of the user turns' text: the transcripts the audio speaks (system prompts are not counted)."""
    return sum(len(item["text"]) for m in record.messages if m["role"] == "user"
               for item in content_items(m["content"]) if item.get("type") == "text")


def content_items(content: Any) -> list[dict]:
    """Normalise a message's content (str, dict or list of those) to a list of {"type": ...} dicts."""
    items = content if isinstance(content, list) else [content]
    out = []
    for item in items:
        out.append({"type": "text", "text": item} if isinstance(item, str) else item)
    return out


def _check_content_item(item: Any, where: str) -> None:
    if not isinstance(item, dict):
        raise RecordError(f"{where}: content item must be a string or an object, got {type(item).__name__}")
    kind = item.get("type")
    if kind == "text":
        if not isinstance(item.get("text"), str):
            raise RecordError(f"{where}: text item needs a string 'text'")
        if not item["text"].strip():
            raise RecordError(f"{where}: empty text")
    elif kind == "audio":
        url = item.get("audio_url")
        if not isinstance(url, str) or not url.strip():
            raise RecordError(f"{where}: audio item needs a non-empty string 'audio_url'")
        if url.startswith(("data:", "http://", "https://", "s3://", "gs://")) or "|" in url:
            raise RecordError(f"{where}: audio_url must be a local file path, got {url!r}")
    else:
        raise RecordError(f"{where}: unknown content type {kind!r} (expected 'text' or 'audio')")


def parse_record(obj: Any, base_dir: Path, index: int, source: str) -> Record:
    """Check the schema of one ChatML record (no file I/O) and resolve its audio paths against base_dir."""
    if not isinstance(obj, dict):
        raise RecordError(f"record must be a JSON object, got {type(obj).__name__}")
    unknown = sorted(set(obj) - RECORD_KEYS)
    if unknown:
        raise RecordError(f"unknown key {unknown[0]!r} (allowed: {', '.join(sorted(RECORD_KEYS))})")
    messages = obj.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RecordError("'messages' must be a non-empty list")
    audio: list[str] = []
    audio_turns: list[tuple[int, str]] = []
    for i, msg in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(msg, dict):
            raise RecordError(f"{where}: must be an object with 'role' and 'content'")
        role = msg.get("role")
        if role not in ROLES:
            raise RecordError(f"{where}: role {role!r} is not one of {', '.join(ROLES)}")
        if "content" not in msg or msg["content"] is None:
            raise RecordError(f"{where}: missing 'content'")
        if not isinstance(msg["content"], (str, dict, list)) or msg["content"] == []:
            raise RecordError(f"{where}: content must be a string, an object or a non-empty list")
        for item in content_items(msg["content"]):
            _check_content_item(item, where)
            if item["type"] == "audio":
                path = Path(item["audio_url"])
                audio.append(str(path if path.is_absolute() else (base_dir / path)))
                audio_turns.append((i, role))
    speaker = obj.get("speaker")
    if speaker is not None and not isinstance(speaker, str):
        raise RecordError(f"'speaker' must be a string, got {type(speaker).__name__}")
    start = obj.get("start_index")
    if start is None:
        start = 0
    if isinstance(start, bool) or not isinstance(start, int) or not 0 <= start < len(messages):
        raise RecordError(f"'start_index' must be an integer in [0, {len(messages) - 1}], got {start!r}")
    if not any(i >= start and role == "assistant" for i, role in audio_turns):
        raise RecordError(f"no assistant audio at or after start_index {start}: nothing to train on")
    misc = obj.get("misc")
    if misc is not None and not isinstance(misc, dict):
        raise RecordError("'misc' must be an object")
    return Record(index=index, source=source, messages=messages, start_index=start, speaker=speaker,
                  audio=audio, misc=misc)


def _read_jsonl(path: Path) -> Iterator[tuple[int, Any | RecordError]]:
    with open(path, encoding="utf-8-sig") as f:  # a byte-order mark is no part of the first record
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield lineno, json.loads(line)
            except json.JSONDecodeError as e:
                yield lineno, RecordError(f"not valid JSON ({e.msg} at column {e.colno})")


def detect_format(path: Path) -> str:
    """'chatml' or 'utterances', from the first parseable line."""
    for _, obj in _read_jsonl(path):
        if isinstance(obj, dict):
            if "messages" in obj:
                return "chatml"
            if "audio" in obj and "text" in obj:
                return "utterances"
    raise RecordError(f"{path}: cannot tell the manifest format: no line has 'messages' (ChatML) "
                      f"or 'audio' + 'text' (utterances); pass --format")


def read_chatml(path: Path) -> tuple[list[Record], list[Reject]]:
    records, rejects = [], []
    for index, (lineno, obj) in enumerate(_read_jsonl(path)):
        source = f"{path}:{lineno}"
        try:
            if isinstance(obj, RecordError):
                raise obj
            records.append(parse_record(obj, path.parent, index, source))
        except RecordError as e:
            rejects.append(Reject(source, str(e), index))
    return records, rejects


@dataclass
class Utterance:
    index: int
    source: str
    audio: str
    text: str
    speaker: str
    language: str | None = None
    duration: float | None = None


def read_utterances(path: Path) -> tuple[list[Utterance], list[Reject]]:
    utts, rejects = [], []
    for index, (lineno, obj) in enumerate(_read_jsonl(path)):
        source = f"{path}:{lineno}"
        try:
            if isinstance(obj, RecordError):
                raise obj
            if not isinstance(obj, dict):
                raise RecordError(f"utterance must be a JSON object, got {type(obj).__name__}")
            missing = sorted(UTTERANCE_KEYS - set(obj))
            if missing:
                raise RecordError(f"missing key {missing[0]!r} (an utterance needs audio, text, speaker)")
            unknown = sorted(set(obj) - UTTERANCE_KEYS - UTTERANCE_OPTIONAL)
            if unknown:
                raise RecordError(f"unknown key {unknown[0]!r} (allowed: audio, text, speaker, language, duration)")
            for key in ("audio", "text", "speaker"):
                if not isinstance(obj[key], str) or not obj[key].strip():
                    raise RecordError(f"{key!r} must be a non-empty string")
            if "language" in obj and (not isinstance(obj["language"], str) or not obj["language"].strip()):
                raise RecordError("'language' must be a non-empty string")
            duration = obj.get("duration")
            if duration is not None and (isinstance(duration, bool) or not isinstance(duration, (int, float))
                                         or not duration > 0):
                raise RecordError(f"'duration' must be a positive number of seconds, got {duration!r}")
            audio = Path(obj["audio"])
            utts.append(Utterance(index, source, str(audio if audio.is_absolute() else path.parent / audio),
                                  obj["text"], obj["speaker"], obj.get("language"), duration))
        except RecordError as e:
            rejects.append(Reject(source, str(e), index))
    return utts, rejects


def cloning_messages(refs: list[Utterance], target: Utterance, system_prompt: str) -> list[dict]:
    """system, (user ref text, assistant ref audio) x K, user target text, assistant target audio."""
    messages = [{"role": "system", "content": system_prompt}]
    for u in refs + [target]:
        messages.append({"role": "user", "content": u.text})
        messages.append({"role": "assistant", "content": {"type": "audio", "audio_url": u.audio}})
    return messages


def pair_utterances(utts: list[Utterance], refs_per_target: int, seed: int,
                    system_prompt: str = DEFAULT_SYSTEM_PROMPT, fault=None,
                    wanted=None) -> tuple[list[Record], list[Reject]]:
    """Make one zero-shot cloning record per utterance, with K references drawn from the same speaker.

    The draw for target i depends only on (seed, i) and the speaker's utterance list, so every part of a
    `--part I/N` build pairs identically. With FAULT (utterance -> why it cannot be used, or None), an utterance
    with a fault is rejected for it, and references are drawn only from utterances without one: a drawn reference
    with a fault is replaced by the next of a second seeded draw over the rest, so a manifest without faults pairs
    as without FAULT. WANTED (index -> bool) limits the targets paired (and checked) to a part of the manifest."""
    by_speaker: dict[str, list[int]] = defaultdict(list)
    position: list[int] = []  # utterance i is by_speaker[its speaker][position[i]]
    for i, u in enumerate(utts):
        position.append(len(by_speaker[u.speaker]))
        by_speaker[u.speaker].append(i)
    records, rejects = [], []
    for i, target in enumerate(utts):
        if wanted is not None and not wanted(target.index):
            continue
        own = fault(target) if fault is not None else None
        if own is not None:
            rejects.append(Reject(target.source, own, target.index))
            continue
        others = _Without(by_speaker[target.speaker], position[i])
        if len(others) < refs_per_target:
            rejects.append(Reject(target.source, f"speaker {target.speaker!r} has {len(others) + 1} utterance(s); "
                                  f"--refs-per-target {refs_per_target} needs at least {refs_per_target + 1}",
                                  target.index, unpaired_speaker=target.speaker))
            continue
        drawn = random.Random(f"{seed}:{target.index}").sample(others, refs_per_target)
        if fault is not None:
            drawn = _usable_references(utts, others, drawn, refs_per_target, f"{seed}:{target.index}:more", fault)
            if len(drawn) < refs_per_target:
                usable = len(drawn)
                rejects.append(Reject(target.source, f"speaker {target.speaker!r} has {usable} usable utterance(s) "
                                      f"besides this one ({len(others) - usable} of its others were rejected); "
                                      f"--refs-per-target {refs_per_target} needs {refs_per_target}",
                                      target.index, unpaired_speaker=target.speaker))
                continue
        refs = [utts[j] for j in drawn]
        messages = cloning_messages(refs, target, system_prompt)
        misc = {"ref_sources": [u.source for u in refs], **({"language": target.language} if target.language else {})}
        records.append(Record(index=target.index, source=target.source, messages=messages,
                              start_index=len(messages) - 1, speaker=target.speaker,
                              audio=[u.audio for u in refs + [target]], misc=misc))
    return records, rejects


def _usable_references(utts: list[Utterance], others: "_Without", drawn: list[int], k: int, seed: str,
                       fault) -> list[int]:
    """DRAWN without the utterances that have a fault, topped up to K from a seeded draw over the rest of OTHERS
    (fewer when too few are usable)."""
    usable = [j for j in drawn if fault(utts[j]) is None]
    if len(usable) == k:
        return usable
    taken = set(drawn)
    rest = [j for j in others if j not in taken]
    for j in random.Random(seed).sample(rest, len(rest)):
        if fault(utts[j]) is None:
            usable.append(j)
            if len(usable) == k:
                break
    return usable


class _Without(Sequence):
    """A list without its element at `skip`, as a sequence random.sample draws from without copying it (a
    speaker of 100k utterances would otherwise cost a 100k-element copy per target)."""

    def __init__(self, items: list, skip: int):
        self.items, self.skip = items, skip

    def __len__(self) -> int:
        return len(self.items) - 1

    def __getitem__(self, k: int):
        if not 0 <= k < len(self):
            raise IndexError(k)
        return self.items[k + (k >= self.skip)]


def read_manifest(path: str | Path, fmt: str = "auto", refs_per_target: int = 1, seed: int = 0, fault=None,
                  wanted=None) -> tuple[list[Record], list[Reject], str]:
    """Records and schema rejects of a manifest, in manifest order. Audio files are opened only through FAULT,
    which an utterance manifest's pairing asks (pair_utterances); WANTED limits its targets."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"manifest {path} does not exist")
    fmt = detect_format(path) if fmt == "auto" else fmt
    if fmt == "chatml":
        records, rejects = read_chatml(path)
    elif fmt == "utterances":
        utts, rejects = read_utterances(path)
        records, pair_rejects = pair_utterances(utts, refs_per_target, seed, fault=fault, wanted=wanted)
        rejects = [r for r in rejects if wanted is None or wanted(r.index)] + pair_rejects
    else:
        raise ValueError(f"unknown manifest format {fmt!r} (expected auto, chatml or utterances)")
    return records, rejects, fmt


def load_text_tokenizer(name_or_path: str):
    """The tokenizer, with its resolved name (`tokenizer.name_or_path` is then that name, not a cache path)."""
    from transformers import AutoTokenizer

    from higgs_ds.checkpoints.hub import resolve

    checkpoint = resolve(name_or_path, "text_tokenizer")
    tokenizer = AutoTokenizer.from_pretrained(str(checkpoint.path))
    tokenizer.name_or_path = checkpoint.spec
    return tokenizer


def text_tokenizer_fingerprint(tokenizer) -> str:
    """Identifies a text tokenizer by content: pre-tokenized ids in shards are used only with the same one."""
    h = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    h.update(backend.to_str().encode() if backend is not None else json.dumps(tokenizer.get_vocab(),
                                                                              sort_keys=True).encode())
    h.update(json.dumps(tokenizer.special_tokens_map, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


def chatml_tokens(record: dict, n_audio: int, tokenizer) -> tuple[list[int], list[int]]:
    """(input ids, label ids) of a ChatML record (messages, start_index, speaker) through boson_multimodal's own
    `prepare_chatml_sample` (which prints and hides its errors: they become a RecordError here)."""
    from boson_multimodal.dataset.chatml_dataset import prepare_chatml_sample

    with open(os.devnull, "w") as devnull:
        import contextlib

        with contextlib.redirect_stdout(devnull):
            input_tokens, label_tokens, audio_contents, _ = prepare_chatml_sample(record, tokenizer)
    if input_tokens is None:
        raise RecordError("boson_multimodal's prepare_chatml_sample rejected the record")
    if len(audio_contents) != n_audio:
        raise RecordError(f"prepare_chatml_sample found {len(audio_contents)} audio items, expected {n_audio}")
    return input_tokens, label_tokens

