"""Manifest validation: every kind of bad input is reported with its file and line; valid records are kept."""

import json
import wave

import numpy as np
import pytest

from tests.helpers import run_cli


def _wav(path, seconds=1.0, sr=16000, silent=False):
    n = int(seconds * sr)
    t = np.arange(n) / sr
    data = np.zeros(n) if silent else 0.3 * np.sin(2 * np.pi * 220 * t)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sr)
        w.writeframes((data * 32767).astype("<i2").tobytes())


def _record(target="tgt.wav", ref="ref.wav", start_index=4, **extra):
    rec = {"messages": [{"role": "system", "content": "Generate audio following instruction."},
                        {"role": "user", "content": "reference text"},
                        {"role": "assistant", "content": {"type": "audio", "audio_url": ref}},
                        {"role": "user", "content": "target text"},
                        {"role": "assistant", "content": {"type": "audio", "audio_url": target}}],
           "speaker": "spk", "start_index": start_index}
    rec.update(extra)
    return rec


# (description, JSONL line, expected fragment of the reason)
BAD_LINES = [
    ("invalid json", '{"messages": [', "not valid JSON"),
    ("not an object", "[1, 2]", "must be a JSON object"),
    ("unknown key", json.dumps(_record(speekr="x")), "unknown key 'speekr'"),
    ("no messages", json.dumps({"speaker": "a", "start_index": 0}), "'messages' must be a non-empty list"),
    ("bad role", json.dumps({"messages": [{"role": "robot", "content": "hi"}]}), "role 'robot'"),
    ("empty text", json.dumps({"messages": [{"role": "user", "content": "  "},
                                            {"role": "assistant", "content": {"type": "audio",
                                                                              "audio_url": "tgt.wav"}}]}),
     "empty text"),
    ("unknown content type", json.dumps({"messages": [{"role": "user", "content": {"type": "video"}}]}),
     "unknown content type 'video'"),
    ("start_index out of range", json.dumps(_record(start_index=9)), "'start_index' must be an integer in [0, 4]"),
    ("no assistant audio to train", json.dumps(_record(start_index=3) | {"messages": _record()["messages"][:4]}),
     "no assistant audio at or after start_index"),
    ("speaker not a string", json.dumps(_record(speaker=7)), "'speaker' must be a string"),
    ("remote audio url", json.dumps(_record(target="http://example.com/a.wav")), "must be a local file path"),
    ("missing audio file", json.dumps(_record(target="nope.wav")), "does not exist"),
    ("audio does not decode", json.dumps(_record(target="garbage.wav")), "does not decode"),
    ("audio too short", json.dumps(_record(target="short.wav")), "shorter than"),
    ("audio too long", json.dumps(_record(target="long.wav")), "longer than"),
    ("silent audio", json.dumps(_record(target="silent.wav")), "pure digital silence"),
    ("sample rate too low", json.dumps(_record(target="lowrate.wav")), "sample rate 4000 Hz"),
    ("transcript far longer than its audio",
     json.dumps(_record() | {"messages": _record()["messages"][:3] + [{"role": "user", "content": "x" * 2000}] +
                             _record()["messages"][4:]}),
     "2014 characters of text for 2.5 s of audio (806/s, over --max-chars-per-second 40)"),
]


@pytest.fixture()
def bad_manifest(tmp_path):
    _wav(tmp_path / "ref.wav")
    _wav(tmp_path / "tgt.wav", seconds=1.5)
    _wav(tmp_path / "short.wav", seconds=0.05)
    _wav(tmp_path / "long.wav", seconds=3.0)
    _wav(tmp_path / "silent.wav", silent=True)
    _wav(tmp_path / "lowrate.wav", sr=4000)
    (tmp_path / "garbage.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEfmt garbage" * 10)
    lines = [json.dumps(_record())]  # line 1 is valid
    lines += [line for _, line, _ in BAD_LINES]
    lines += [json.dumps(_record(ref="tgt.wav", target="ref.wav"))]  # last line valid too
    path = tmp_path / "train.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_validate_reports_every_bad_line(bad_manifest):
    proc = run_cli("shards", "validate", "--input", bad_manifest, "--format", "chatml", "--max-seconds", 2.0,
                   check=False)
    assert proc.returncode == 1, proc.stderr
    out = proc.stdout.splitlines()
    assert len(out) == len(BAD_LINES), proc.stdout
    for i, (what, _, fragment) in enumerate(BAD_LINES):
        line_no = i + 2
        hit = [o for o in out if o.startswith(f"{bad_manifest}:{line_no}: ")]
        assert hit, f"{what}: no report for line {line_no} in\n{proc.stdout}"
        assert fragment in hit[0], f"{what}: {hit[0]!r} lacks {fragment!r}"
    assert "Traceback" not in proc.stderr


def test_text_token_bound_rejects_with_the_line(speech, fixtures_dir):
    manifest = speech / "utterances.jsonl"
    proc = run_cli("shards", "validate", "--input", manifest, "--text-tokenizer", fixtures_dir / "tokenizer",
                   "--max-text-tokens", 90, check=False)
    rejected = [line for line in proc.stdout.splitlines() if "text tokens, over --max-text-tokens 90" in line]
    assert proc.returncode == 1 and rejected and all(line.startswith(f"{manifest}:") for line in rejected)
    counts = sorted(int(line.split(": ")[-1].split()[0]) for line in rejected)
    assert counts[0] > 90 and len(rejected) == 6  # exactly the records over the bound (they hold 70-116 tokens)
    assert run_cli("shards", "validate", "--input", manifest, "--text-tokenizer", fixtures_dir / "tokenizer",
                   check=False).returncode == 0  # the default bound keeps them all


def test_validate_clean_manifest_exits_zero(speech):
    for manifest in ("chatml.jsonl", "utterances.jsonl"):
        proc = run_cli("shards", "validate", "--input", speech / manifest)
        assert proc.stdout == "" and "12 records, 0 with problems" in proc.stderr


def test_build_rejects_are_counted_written_and_bounded(bad_manifest, fixtures_dir, code_cache, tmp_path):
    out = tmp_path / "out"
    args = ["shards", "build", "--input", bad_manifest, "--out", out, "--audio-tokenizer",
            fixtures_dir / "audio_tokenizer", "--cache-dir", code_cache, "--max-seconds", 2.0]
    proc = run_cli(*args, check=False)
    assert proc.returncode == 1 and "over --max-reject-fraction" in proc.stderr, proc.stderr
    assert not (out / "index.json").exists()
    rejects = [json.loads(x) for x in (out / "rejects.part-0-of-1.jsonl").read_text().splitlines()]
    assert len(rejects) == len(BAD_LINES)

    run_cli(*args, "--max-reject-fraction", 1.0)
    index = json.loads((out / "index.json").read_text())
    assert index["samples"] == 2 and index["rejected"] == len(BAD_LINES)  # nothing valid dropped
    rejects = [json.loads(x) for x in (out / "rejects.jsonl").read_text().splitlines()]
    assert [r["source"] for r in rejects] == [f"{bad_manifest}:{i + 2}" for i in range(len(BAD_LINES))]
    assert all(r["reason"] for r in rejects)


def test_utterance_pairing_is_same_speaker_deterministic_and_rejects_lonely_speakers(tmp_path):
    from higgs_ds.data.chatml import read_manifest

    utts = [{"audio": f"{s}{i}.wav", "text": f"text {s} {i}", "speaker": s} for s in "ab" for i in range(4)]
    utts.append({"audio": "c0.wav", "text": "alone", "speaker": "c"})
    path = tmp_path / "utts.jsonl"
    path.write_text("".join(json.dumps(u) + "\n" for u in utts))
    records, rejects, fmt = read_manifest(path, refs_per_target=2, seed=3)
    assert fmt == "utterances" and len(records) == 8
    assert len(rejects) == 1 and rejects[0].source.endswith(":9") and "speaker 'c' has 1 utterance" in rejects[0].reason
    for r in records:
        target = r.audio[-1]
        assert len(r.audio) == 3 and target not in r.audio[:-1]
        assert all(p.split("/")[-1][0] == r.speaker for p in r.audio)
        assert r.messages[-1]["role"] == "assistant" and r.start_index == len(r.messages) - 1
    again, _, _ = read_manifest(path, refs_per_target=2, seed=3)
    assert [r.audio for r in again] == [r.audio for r in records]
    other, _, _ = read_manifest(path, refs_per_target=2, seed=4)
    assert [r.audio for r in other] != [r.audio for r in records]


def test_a_broken_clip_is_rejected_by_its_own_line_and_never_drawn_as_a_reference(fixtures_dir, code_cache,
                                                                                  tmp_path):
    """One speaker with three good clips and four broken ones (missing, empty, not audio, too long), and a second
    speaker whose only other clip is broken: every clip is checked before references are drawn, so the three good
    targets build, each with a good reference, the four broken clips are rejected by their own lines naming their
    own files, and the lonely good target is rejected for having no usable reference. validate says the same."""
    good = ["a1.wav", "a2.wav", "a3.wav"]
    for name in good + ["b1.wav"]:
        _wav(tmp_path / name, seconds=1.0 + 0.1 * len(name))
    _wav(tmp_path / "long.wav", seconds=3.0)
    (tmp_path / "empty.wav").write_bytes(b"")
    (tmp_path / "text.wav").write_text("not audio at all\n" * 20)
    clips = [("a1.wav", "A"), ("missing.wav", "A"), ("a2.wav", "A"), ("empty.wav", "A"), ("text.wav", "A"),
             ("a3.wav", "A"), ("long.wav", "A"), ("b1.wav", "B"), ("missing-b.wav", "B")]
    manifest = tmp_path / "voices.jsonl"
    manifest.write_text("".join(json.dumps({"audio": a, "text": f"utterance {i} of {s}", "speaker": s}) + "\n"
                                for i, (a, s) in enumerate(clips)))
    broken = {2: "missing.wav", 4: "empty.wav", 5: "text.wav", 7: "long.wav", 9: "missing-b.wav"}  # by line

    proc = run_cli("shards", "validate", "--input", manifest, "--max-seconds", 2.0, check=False)
    lines = proc.stdout.splitlines()
    assert proc.returncode == 1 and len(lines) == 6, proc.stdout
    for line_no, name in broken.items():
        hit = [x for x in lines if x.startswith(f"{manifest}:{line_no}: ")]
        assert len(hit) == 1 and str(tmp_path / name) in hit[0], (line_no, lines)
    lonely = [x for x in lines if x.startswith(f"{manifest}:8: ")]
    assert lonely and "speaker 'B' has 0 usable utterance(s) besides this one (1 of its others were rejected)" \
        in lonely[0]

    out = tmp_path / "shards"
    run_cli("shards", "build", "--input", manifest, "--out", out, "--audio-tokenizer", fixtures_dir / "audio_tokenizer",
            "--cache-dir", code_cache, "--max-seconds", 2.0, "--max-reject-fraction", 1.0)
    rejects = [json.loads(x) for x in (out / "rejects.jsonl").read_text().splitlines()]
    assert sorted(r["source"] for r in rejects) == sorted(f"{manifest}:{n}" for n in [*broken, 8])
    assert all(str(tmp_path / broken[int(r["source"].rsplit(":", 1)[1])]) in r["reason"]
               for r in rejects if not r["source"].endswith(":8"))
    from higgs_ds.data.shard_index import ShardIndex

    index = ShardIndex.load(out)
    assert len(index) == 3
    good_lines = {f"{manifest}:{n}" for n in (1, 3, 6)}
    for i in range(len(index)):
        meta, _ = index.read(i)
        assert meta["source"] in good_lines and set(meta["misc"]["ref_sources"]) <= good_lines - {meta["source"]}
