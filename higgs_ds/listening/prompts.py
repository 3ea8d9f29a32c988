"""What to say and in whose voice: cloning prompts from a JSONL file (one a line, bad lines rejected with
file:line) or drawn from a shard set (references as stored codes, the record's target as ground truth)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from higgs_ds.data.chatml import DEFAULT_SYSTEM_PROMPT, RecordError, Reject, Utterance, cloning_messages

PROMPT_KEYS = {"id", "ref_audio", "ref_text", "text", "target_audio", "language"}


@dataclass
class Reference:
    """A voice reference: its transcript and its audio, as a file or as codes already tokenized (from shards)."""

    text: str
    audio: str | None = None
    codes: np.ndarray | None = None  # (num_codebooks, frames), fed to the model without encoding again


@dataclass
class Prompt:
    id: str
    source: str  # where it came from: "prompts.jsonl:3", "--text", "shards/val sample s000000012"
    text: str  # what to say
    refs: list[Reference] = field(default_factory=list)
    target_audio: str | None = None  # ground truth, when known (a file)
    target_codes: np.ndarray | None = None  # ground truth as codes (shards)
    language: str | None = None

    def messages(self) -> list[dict]:
        """system, (user ref text, assistant ref audio) per reference, user text: what the model continues."""
        refs = [Utterance(0, "", r.audio or "placeholder", r.text, "") for r in self.refs]
        return cloning_messages(refs, Utterance(0, "", "", self.text, ""), DEFAULT_SYSTEM_PROMPT)[:-1]

    def describe(self) -> dict:
        return {"id": self.id, "source": self.source, "text": self.text, "language": self.language,
                "ref_text": [r.text for r in self.refs], "ref_audio": [r.audio for r in self.refs],
                "target_audio": self.target_audio}


def read_prompts(path: str | Path) -> tuple[list[Prompt], list[Reject]]:
    """Prompts of a JSONL file, one a line: {"ref_audio", "ref_text", "text"} and optionally "id", "target_audio"
    (ground truth) and "language". Paths are relative to the file. Bad lines are rejects naming file:line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prompts file {path} does not exist")
    prompts, rejects, seen = [], [], set()
    with open(path, encoding="utf-8-sig") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            source = f"{path}:{lineno}"
            try:
                prompt = _parse_prompt(line, path.parent, source, lineno)
                if prompt.id in seen:
                    raise RecordError(f"id {prompt.id!r} is used by an earlier line")
                seen.add(prompt.id)
                prompts.append(prompt)
            except RecordError as e:
                rejects.append(Reject(source, str(e), lineno))
    return prompts, rejects


def _parse_prompt(line: str, base: Path, source: str, lineno: int) -> Prompt:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise RecordError(f"not valid JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(obj, dict):
        raise RecordError(f"a prompt must be a JSON object, got {type(obj).__name__}")
    unknown = sorted(set(obj) - PROMPT_KEYS)
    if unknown:
        raise RecordError(f"unknown key {unknown[0]!r} (allowed: {', '.join(sorted(PROMPT_KEYS))})")
    for key in ("ref_audio", "ref_text", "text"):
        if not isinstance(obj.get(key), str) or not obj[key].strip():
            raise RecordError(f"{key!r} must be a non-empty string")
    for key in ("id", "target_audio", "language"):
        if key in obj and (not isinstance(obj[key], str) or not obj[key].strip()):
            raise RecordError(f"{key!r} must be a non-empty string")
    if "id" in obj and not all(c.isalnum() or c in "-_" for c in obj["id"]):
        raise RecordError(f"'id' {obj['id']!r} may hold only letters, digits, - and _ (it names the wav file)")

    def local(p: str) -> str:
        return str(Path(p) if Path(p).is_absolute() else base / p)

    return Prompt(id=obj.get("id", f"line{lineno:05d}"), source=source, text=obj["text"],
                  refs=[Reference(obj["ref_text"], local(obj["ref_audio"]))],
                  target_audio=local(obj["target_audio"]) if "target_audio" in obj else None,
                  language=obj.get("language"))


def prompts_from_shards(index, count: int, seed: int = 0) -> list[Prompt]:
    """COUNT prompts from a shard set: the context of each chosen record (its references as stored codes) and its
    first trained target as text and ground truth. Seeded; speakers spread as evenly as the set allows."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(index))
    speakers = index.rows["speaker"][order]
    # round-robin over speakers: first one sample of each speaker, then a second of each, ...
    rank_in_speaker = np.zeros(len(order), dtype=np.int64)
    counts: dict[int, int] = {}
    for k, s in enumerate(speakers):
        rank_in_speaker[k] = counts.get(int(s), 0)
        counts[int(s)] = rank_in_speaker[k] + 1
    chosen = order[np.argsort(rank_in_speaker, kind="stable")][:count]
    return [prompt_from_sample(index, int(i)) for i in chosen]


def prompt_from_sample(index, i: int) -> Prompt:
    from higgs_ds.data.chatml import content_items

    meta, codes = index.read(i)
    bounds = np.cumsum([0] + [a["frames"] for a in meta["audio"]])
    clips = iter(zip(meta["audio"], (codes[:, a:b] for a, b in zip(bounds[:-1], bounds[1:]))))
    refs, text, last_user = [], None, None
    target_path = target_codes = None
    for turn, m in enumerate(meta["messages"]):
        for item in content_items(m["content"]):
            if item["type"] == "text" and m["role"] == "user":
                last_user = item["text"]
            elif item["type"] == "audio":
                info, clip = next(clips)
                if turn < meta["start_index"]:
                    refs.append(Reference(last_user or "", info["path"] if Path(info["path"]).is_file() else None,
                                          np.asarray(clip)))
                elif m["role"] == "assistant" and text is None:
                    text = last_user
                    target_path = info["path"] if Path(info["path"]).is_file() else None
                    target_codes = np.asarray(clip)
    return Prompt(id=meta["key"], source=index.where(i), text=text or "", refs=refs, target_audio=target_path,
                  target_codes=target_codes, language=(meta.get("misc") or {}).get("language"))
