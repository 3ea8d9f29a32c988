"""Every corpus layout imported as its users have it (built from espeak-ng speech, converted by ffmpeg), validated,
built into shards, and the samples read back; speaker-disjoint splits with references paired inside each split."""

import json
import math
import random
from pathlib import Path

import pytest

from tests.data import corpus_layouts
from tests.helpers import run_cli

LAYOUTS = {"ljspeech": corpus_layouts.ljspeech, "libritts": corpus_layouts.libritts, "vctk": corpus_layouts.vctk,
           "commonvoice": corpus_layouts.commonvoice, "emilia": corpus_layouts.emilia,
           "hf-parquet": corpus_layouts.hf_parquet, "nemo": corpus_layouts.nemo, "kaldi": corpus_layouts.kaldi,
           "folder": corpus_layouts.folder}


def build_layout(fmt, speech, root):
    fn = LAYOUTS[fmt]
    return fn(speech, root, root / "tmp") if fmt in ("emilia", "hf-parquet") else fn(speech, root)


@pytest.mark.parametrize("fmt", list(LAYOUTS))
def test_import_validate_build_and_read_back(fmt, speech, fixtures_dir, code_cache, tmp_path):
    (tmp_path / "tmp").mkdir()
    src, expected = build_layout(fmt, speech, tmp_path / "corpus")
    manifest = tmp_path / "out" / "utterances.jsonl"
    proc = run_cli("manifest", "import", src, "--format", fmt, "--out", manifest)
    summary = json.loads(proc.stdout)
    assert summary["utterances"] == expected["utterances"] and summary["speakers"] == expected["speakers"], summary
    rejects = [json.loads(x) for x in (tmp_path / "out" / "utterances.rejects.jsonl").read_text().splitlines()]
    if "rejects" in expected:
        got = {r["source"]: r["reason"] for r in rejects}
        assert set(got) == set(expected["rejects"]), got
        for source, reason in expected["rejects"].items():
            assert got[source].startswith(reason), (source, got[source])
    else:
        assert len(rejects) == expected["reject_count"] and all(expected["reject_reason"] in r["reason"]
                                                                 for r in rejects), rejects
    assert summary["rejected"] == len(rejects)
    utts = [json.loads(x) for x in manifest.read_text(encoding="utf-8").splitlines()]
    assert all(set(u) <= {"audio", "text", "speaker", "language", "duration"} for u in utts)
    assert all(u["text"] == u["text"].strip() and u["text"] for u in utts)
    if "text" in expected:
        assert any(expected["text"] in u["text"] for u in utts), [u["text"] for u in utts]
    if "language" in expected:
        assert {u.get("language") for u in utts} == {expected["language"]}
    if "languages" in expected:
        assert sorted({u["language"] for u in utts}) == expected["languages"]
    if expected.get("durations"):
        import soundfile as sf

        for u in utts:
            assert u["duration"] == pytest.approx(sf.info(u["audio"]).duration, abs=0.05)

    run_cli("shards", "validate", "--input", manifest)  # every file decodes: exit 0
    shards = tmp_path / "shards"
    run_cli("shards", "build", "--input", manifest, "--out", shards, "--audio-tokenizer",
            fixtures_dir / "audio_tokenizer", "--text-tokenizer", fixtures_dir / "tokenizer", "--cache-dir", code_cache,
            "--shard-size", 4)
    from higgs_ds.audio import read_audio
    from higgs_ds.data.shard_index import ShardIndex

    index = ShardIndex.load(shards)
    assert len(index) == len(utts) and index.meta["rejected"] == 0
    by_audio = {u["audio"]: u for u in utts}
    for i in range(len(index)):
        meta, codes = index.read(i)
        target = meta["audio"][-1]
        utt = by_audio[target["path"]]
        assert meta["messages"][-2]["content"] == utt["text"] and meta["speaker"] == utt["speaker"]
        ref = by_audio[meta["audio"][0]["path"]]
        assert ref["speaker"] == utt["speaker"] and ref["audio"] != utt["audio"]
        wav, sr = read_audio(target["path"])  # mono whatever the file had; the tokenizer resamples to 24 kHz
        assert abs(target["frames"] - math.ceil(len(wav) / sr * 25)) <= 1
        assert codes.shape[0] == 8 and codes.max() < 1024
        assert meta["misc"].get("language") == utt.get("language")


def test_corrupt_and_unsupported_audio_are_rejected_with_the_line(speech, tmp_path):
    src, _ = corpus_layouts.folder(speech, tmp_path / "corpus")
    (src / "alice" / "broken.mp3").write_bytes(b"ID3\x03\x00\x00\x00 not really an mp3 at all" * 50)
    (src / "alice" / "broken.txt").write_text("A broken clip.")
    (src / "alice" / "clip.wav").write_bytes(b"\x00\x01" * 4000)  # no RIFF header
    (src / "alice" / "clip.txt").write_text("Headerless.")
    manifest = tmp_path / "utts.jsonl"
    run_cli("manifest", "import", src, "--format", "folder", "--out", manifest)
    lines = {json.loads(x)["audio"].rsplit("/", 1)[-1]: n for n, x in
             enumerate(manifest.read_text().splitlines(), 1)}
    proc = run_cli("shards", "validate", "--input", manifest, check=False)
    assert proc.returncode == 1
    for name in ("broken.mp3", "clip.wav"):
        line = next(x for x in proc.stdout.splitlines() if x.startswith(f"{manifest}:{lines[name]}:"))
        assert f"audio file {(src / 'alice' / name).resolve()} does not decode" in line
        assert "readable: wav, flac, mp3, ogg (vorbis, opus)" in line


def test_text_in_any_language_with_bom_and_crlf_reaches_the_shards_unchanged(speech, fixtures_dir, tmp_path):
    """A manifest written on Windows (BOM, CRLF) in several scripts: read as is, no English-only normalisation."""
    from higgs_ds.data.chatml import read_manifest

    wavs = sorted((speech / "wavs").glob("*.wav"))
    texts = ["Ça va très bien, merci.", "Guten Morgen, schöne Grüße!", "今天天气很好。", "Добрый день.",
             "¿Dónde está la estación?", "こんにちは、元気ですか。"]
    lines = [json.dumps({"audio": str(w), "text": t, "speaker": "multi", "language": "xx"}, ensure_ascii=False)
             for w, t in zip(wavs, texts)]
    manifest = tmp_path / "m.jsonl"
    manifest.write_bytes(("\ufeff" + "\r\n".join(lines) + "\r\n").encode("utf-8"))
    records, rejects, fmt = read_manifest(manifest)
    assert fmt == "utterances" and not rejects and len(records) == 6
    assert [r.messages[-2]["content"] for r in records] == texts
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(lines[:2]) + "\n" + json.dumps({"audio": str(wavs[2]), "text": " \t ",
                                                             "speaker": "multi"}) + "\n")
    _, rejects, _ = read_manifest(bad)
    assert [str(r) for r in rejects] == [f"{bad}:3: 'text' must be a non-empty string"]


def synthetic_manifest(path, speakers=1000, seed=0):
    rng = random.Random(seed)
    rows = []
    for s in range(speakers):
        for k in range(rng.randint(1, 8)):
            rows.append({"audio": f"/corpus/spk{s:04d}/{k:03d}.wav", "text": f"utterance {k} of {s}",
                         "speaker": f"spk{s:04d}"})
    rng.shuffle(rows)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


@pytest.mark.parametrize("how", [{"val_speakers": 50}, {"val_fraction": 0.1}])
def test_a_1000_speaker_split_is_speaker_disjoint_and_references_stay_inside(tmp_path, how):
    from higgs_ds.data.chatml import pair_utterances, read_utterances
    from higgs_ds.data.splits import split_manifest

    rows = synthetic_manifest(tmp_path / "all.jsonl")
    info = split_manifest(tmp_path / "all.jsonl", tmp_path / "split", heldout_fraction=0.2, seed=3, **how)
    parts = {name: read_utterances(tmp_path / "split" / f"{name}.jsonl")[0] for name in ("train", "val", "heldout")}
    speakers = {name: {u.speaker for u in utts} for name, utts in parts.items()}
    assert not speakers["train"] & speakers["val"] and not speakers["heldout"] & speakers["val"]
    assert speakers["heldout"] <= speakers["train"]  # seen speakers, unseen utterances
    assert sum(len(u) for u in parts.values()) == len(rows)  # nothing dropped
    assert len({u.audio for p in parts.values() for u in p}) == len(rows)
    assert all(len([r for r in rows if r["speaker"] == s]) >= 2 for s in speakers["val"])
    if "val_speakers" in how:
        assert len(speakers["val"]) == 50 == len(info["val_speakers"])
    else:
        assert 0.1 <= len(parts["val"]) / len(rows) < 0.12
    for name in ("train", "val"):
        records, _ = pair_utterances(parts[name], refs_per_target=1, seed=0)
        inside = {u.audio for u in parts[name]}
        assert records and all(a in inside for r in records for a in r.audio)  # no reference crosses the split
    again = split_manifest(tmp_path / "all.jsonl", tmp_path / "again", heldout_fraction=0.2, seed=3, **how)
    assert again["val_speakers"] == info["val_speakers"]
    for name in ("train", "val", "heldout"):
        assert (tmp_path / "split" / f"{name}.jsonl").read_bytes() == (tmp_path / "again" / f"{name}.jsonl").read_bytes()


def test_split_cli_and_listening_prompts_from_the_val_side(speech, tmp_path):
    from higgs_ds.listening.prompts import read_prompts

    run_cli("manifest", "split", speech / "utterances.jsonl", "--out-dir", tmp_path, "--val-speakers", 1)
    info = json.loads((tmp_path / "split.json").read_text())
    assert len(info["val_speakers"]) == 1 and info["val_utterances"] == 4 and info["train_utterances"] == 8
    run_cli("manifest", "prompts", tmp_path / "val.jsonl", "--out", tmp_path / "prompts.jsonl", "--count", 4)
    prompts, rejects = read_prompts(tmp_path / "prompts.jsonl")
    val_audio = {json.loads(x)["audio"] for x in (tmp_path / "val.jsonl").read_text().splitlines()}
    assert all(a.startswith(str(speech)) and (tmp_path / a).is_file() for a in val_audio)  # absolute now
    assert not rejects and len(prompts) == 2  # 4 utterances: 2 (reference, target) pairs
    for p in prompts:
        assert p.refs[0].audio in val_audio and p.target_audio in val_audio and p.target_audio != p.refs[0].audio


def test_pairing_draws_the_same_references_without_copying_the_speaker_list():
    """References are drawn from a view of the speaker's utterances without the target (a 100k-utterance speaker
    made the per-target copy quadratic); the draw equals random.sample over the copied list, so shards built before
    pair the same way (bench/corpora.py measures the speed)."""
    from higgs_ds.data.chatml import Utterance, pair_utterances

    utts = [Utterance(i, f"m:{i}", f"/a/{i}.wav", "text", "LJ" if i % 3 else "other") for i in range(3000)]
    records, rejects = pair_utterances(utts, refs_per_target=2, seed=5)
    assert len(records) == 3000 and not rejects
    for r in records[:300]:
        others = [u.audio for u in utts if u.speaker == utts[r.index].speaker and u.index != r.index]
        assert r.audio[:2] == random.Random(f"5:{r.index}").sample(others, 2)
        assert r.audio[-1] == f"/a/{r.index}.wav"


def test_original_or_normalized_transcripts(speech, tmp_path):
    src, _ = corpus_layouts.ljspeech(speech, tmp_path / "corpus")
    texts = {}
    for which in ("normalized", "original"):
        out = tmp_path / f"{which}.jsonl"
        run_cli("manifest", "import", src, "--format", "ljspeech", "--out", out, "--text", which)
        texts[which] = [json.loads(x)["text"] for x in out.read_text().splitlines()]
    assert len(texts["normalized"]) == 4 and all(t.endswith('"quoted", first') for t in texts["normalized"])
    assert all(t.endswith('"quoted", 1st') for t in texts["original"][:4])
    assert texts["original"][4] == "Original only."  # line 6: only its normalized transcript is empty


def test_an_emilia_tar_that_breaks_off_keeps_the_samples_before_the_break(speech, tmp_path):
    """Emilia shards are streamed a sample at a time; a shard cut short (a partial download) imports the samples it
    holds whole and names the tar and the last sample it reached for the rest."""
    (tmp_path / "tmp").mkdir()
    src, _ = corpus_layouts.emilia(speech, tmp_path / "corpus", tmp_path / "tmp")
    tar = src / "EN" / "EN-B000000.tar"
    data = tar.read_bytes()
    tar.write_bytes(data[: len(data) * 2 // 3])
    manifest = tmp_path / "utts.jsonl"
    summary = json.loads(run_cli("manifest", "import", src, "--format", "emilia", "--out", manifest).stdout)
    en = [json.loads(x) for x in manifest.read_text(encoding="utf-8").splitlines() if json.loads(x)["language"] == "en"]
    rejects = [json.loads(x) for x in (tmp_path / "utts.rejects.jsonl").read_text().splitlines()]
    assert 1 <= len(en) < 6 and summary["utterances"] == len(en) + 2  # the zh shard is whole
    assert all(Path(u["audio"]).stat().st_size > 0 for u in en)
    broken = [r for r in rejects if r["source"] == str(tar)]
    assert len(broken) == 1 and broken[0]["reason"].startswith("not a readable tar after sample EN_B00000_S0000"), \
        rejects


def test_validate_and_build_agree_on_common_voice_speakers_of_one_clip(speech, fixtures_dir, code_cache, tmp_path):
    """5 of 12 records are targets whose speaker has no other clip: validate counts and lists them, and its exit
    code is what build does under the same --max-reject-fraction (both fail at 0.4, both pass at 0.42)."""
    src = corpus_layouts.commonvoice_mostly_single_clips(speech, tmp_path / "corpus")
    manifest = tmp_path / "utterances.jsonl"
    run_cli("manifest", "import", src, "--format", "commonvoice", "--out", manifest)
    for fraction, ok in ((0.4, False), (0.42, True)):
        validate = run_cli("shards", "validate", "--input", manifest, "--max-reject-fraction", fraction, check=False)
        build = run_cli("shards", "build", "--input", manifest, "--out", tmp_path / f"shards-{fraction}",
                        "--audio-tokenizer", fixtures_dir / "audio_tokenizer", "--cache-dir", code_cache,
                        "--max-reject-fraction", fraction, check=False)
        assert (validate.returncode == 0) == (build.returncode == 0) == ok, (validate.stderr, build.stderr)
        verdict = (f"5 of 12 records rejected (41.7%), {'within' if ok else 'over'} --max-reject-fraction "
                   f"{fraction:.1%}; 5 of them are targets whose speaker has no other utterance to be their reference "
                   f"(5 speakers: single0, single1, single2, single3, single4)")
        assert verdict in validate.stderr and "what `shards build` would do" in validate.stderr
        assert len(validate.stdout.splitlines()) == 5  # each listed with its manifest line
        if not ok:
            assert verdict + ". Corpora like Common Voice have many speakers of one clip: to build without them " \
                             "pass --max-reject-fraction 0.417" in build.stderr
            assert "pass --max-reject-fraction 0.417" in validate.stderr
    rejects = [json.loads(x) for x in (tmp_path / "shards-0.42" / "rejects.jsonl").read_text().splitlines()]
    assert sorted(r["unpaired_speaker"] for r in rejects) == [f"single{k}" for k in range(5)]
    index = json.loads((tmp_path / "shards-0.42" / "index.json").read_text())
    assert index["rejected"] == 5 and sum(s["samples"] for s in index["shards"]) == 7
