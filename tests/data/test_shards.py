"""Shard building: round trip, byte-identical rebuilds, --part joins, resume after a kill, settings checked."""

import json
import os
import signal
import subprocess
import time

import numpy as np

from tests.helpers import CLI, REPO, run_cli


def _build(fixtures_dir, manifest, out, cache, *extra, check=True):
    return run_cli("shards", "build", "--input", manifest, "--out", out, "--audio-tokenizer",
                   fixtures_dir / "audio_tokenizer", "--text-tokenizer", fixtures_dir / "tokenizer",
                   "--cache-dir", cache, *extra, check=check)


def _files(d):
    return {p.name: p.read_bytes() for p in sorted(d.glob("shard-*.tar"))} | {
        n: (d / n).read_bytes() for n in ("index.npz", "index.json", "rejects.jsonl")}


def test_round_trip_records_and_codes(shards, speech, fixtures_dir):
    from higgs_ds.data.chatml import read_manifest
    from higgs_ds.data.codec import AudioEncoder
    from higgs_ds.data.shard_check import iter_shard_samples
    from higgs_ds.data.shard_index import ShardIndex

    records, rejects, _ = read_manifest(speech / "utterances.jsonl")
    assert not rejects
    idx = ShardIndex.load(shards)
    assert len(idx) == len(records) == 12
    assert [s["samples"] for s in idx.meta["shards"]] == [5, 5, 2]
    enc = AudioEncoder(str(fixtures_dir / "audio_tokenizer"), cache_dir=None, device="cpu")
    for i, rec in enumerate(records):
        meta, codes = idx.read(i)
        assert meta["messages"] == rec.messages and meta["start_index"] == rec.start_index
        assert meta["speaker"] == rec.speaker == idx.speaker(i)
        assert [a["path"] for a in meta["audio"]] == rec.audio
        expected = np.concatenate([enc.encode_file(p)[0] for p in rec.audio], axis=1)
        np.testing.assert_array_equal(codes, expected)
        assert idx.rows["audio_frames"][i] == codes.shape[1]
        assert codes.flags.c_contiguous and codes.dtype == np.int16
        assert idx.rows["target_frames"][i] == meta["audio"][-1]["frames"]
        assert idx.rows["text_tokens"][i] == len(meta["tokens"]["input"]) > 0
        # the stored token ids are exactly what boson_multimodal's prepare_chatml_sample makes of the record
        from boson_multimodal.dataset.chatml_dataset import prepare_chatml_sample
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(fixtures_dir / "tokenizer")
        ids, labels, _, _ = prepare_chatml_sample(rec.to_json(), tok)
        assert meta["tokens"]["input"] == ids and meta["tokens"]["label"] == labels
    # WebDataset's own tar reader sees the same samples in the same order as the offset reader
    streamed = [m["key"] for j in range(3) for m, _ in iter_shard_samples(idx.shard_path(j))]
    assert streamed == [f"s{r.index:09d}" for r in records]


def test_chatml_manifest_builds_and_rebuild_is_byte_identical(fixtures_dir, speech, code_cache, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    _build(fixtures_dir, speech / "chatml.jsonl", a, code_cache, "--shard-size", 4)
    _build(fixtures_dir, speech / "chatml.jsonl", b, code_cache, "--shard-size", 4)
    fa, fb = _files(a), _files(b)
    assert set(fa) == {"shard-000000.tar", "shard-000001.tar", "shard-000002.tar", "index.npz", "index.json",
                       "rejects.jsonl"}
    for name in fa:
        if name != "index.json":
            assert fa[name] == fb[name], name
    assert json.loads(fa["index.json"])["shards"] == json.loads(fb["index.json"])["shards"]


def test_parts_join_to_the_single_build(fixtures_dir, speech, code_cache, shards, tmp_path):
    out = tmp_path / "parts"
    first = _build(fixtures_dir, speech / "utterances.jsonl", out, code_cache, "--shard-size", 5, "--part", "0/2")
    assert "index not written yet" in first.stderr and not (out / "index.json").exists()
    assert sorted(p.name for p in out.glob("shard-*.tar")) == ["shard-000000.tar", "shard-000002.tar"]
    _build(fixtures_dir, speech / "utterances.jsonl", out, code_cache, "--shard-size", 5, "--part", "1/2")
    joined, single = _files(out), _files(shards)
    assert joined.keys() == single.keys()
    for name in joined:
        if name != "index.json":
            assert joined[name] == single[name], name
    run_cli("shards", "merge", out)  # explicit join is idempotent
    assert _files(out)["index.npz"] == single["index.npz"]


def test_other_settings_into_the_same_dir_is_refused(fixtures_dir, speech, code_cache, shards):
    proc = _build(fixtures_dir, speech / "utterances.jsonl", shards, code_cache, "--shard-size", 3, check=False)
    assert proc.returncode == 1 and "shard_size" in proc.stderr and "new --out" in proc.stderr


def test_killed_build_resumes_without_duplicates(fixtures_dir, speech, shards, tmp_path):
    out, cache = tmp_path / "killed", tmp_path / "fresh-cache"  # a cold cache makes the build slow enough to kill
    args = CLI + ["shards", "build", "--input", str(speech / "utterances.jsonl"), "--out", str(out),
                  "--audio-tokenizer", str(fixtures_dir / "audio_tokenizer"), "--text-tokenizer",
                  str(fixtures_dir / "tokenizer"), "--cache-dir", str(cache), "--shard-size", "5"]
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=dict(os.environ))
    deadline = time.time() + 300
    while not (out / "parts" / "shard-000000.json").exists():
        assert proc.poll() is None and time.time() < deadline, "build ended before its first shard"
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "index.json").exists()
    done_before = (out / "shard-000000.tar").read_bytes()
    resumed = subprocess.run(args, cwd=REPO, capture_output=True, text=True, env=dict(os.environ))
    assert resumed.returncode == 0, resumed.stderr
    assert "1 already done" in resumed.stderr or "2 already done" in resumed.stderr
    assert (out / "shard-000000.tar").read_bytes() == done_before  # kept, not rewritten
    assert not list(out.glob(".shard-*"))  # no torn temporary files left behind
    resumed_files, single = _files(out), _files(shards)
    for name in single:
        if name != "index.json":
            assert resumed_files[name] == single[name], name
    from higgs_ds.data.shard_index import ShardIndex

    keys = ShardIndex.load(out).rows["record"]
    assert len(keys) == len(set(keys)) == 12


def test_a_full_disk_ends_the_build_with_one_message_and_a_rerun_finishes(fixtures_dir, speech, code_cache, shards,
                                                                           tmp_path):
    import subprocess

    from tests.helpers import small_disk

    with small_disk(tmp_path / "disk", "48k") as disk:
        out = disk / "shards"
        proc = _build(fixtures_dir, speech / "utterances.jsonl", out, code_cache, "--shard-size", 5, check=False)
        assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
        assert f"build failed: no space left on the device holding {out}" in proc.stderr
        assert "run the same command again (finished shards are kept)" in proc.stderr
        assert not list(out.glob(".*.tmp*")) and not (out / "index.json").exists()
        subprocess.run(["mount", "-o", "remount,size=16m", str(disk)], check=True)
        _build(fixtures_dir, speech / "utterances.jsonl", out, code_cache, "--shard-size", 5)
        assert _files(out) == _files(shards)  # byte-identical to a build that never ran out of space
