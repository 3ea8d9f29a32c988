"""Corpus import figures on CPU: importing and validating 100k utterances (an LJSpeech layout of 100k clips, hard
links to a few espeak-ng files, so the files are real and distinct paths), against encoding audio with the Higgs
tokenizer, the step that follows (measured in the same run).

Run: .venv/bin/python -m bench.corpora [--utterances N]
"""

from __future__ import annotations

import argparse
import os
import shutil
import time

from bench.common import WORK, fixtures, speech, table

UTTERANCES = 100_000


def ljspeech_layout(n: int):
    sp = speech()
    wavs = sorted((sp / "wavs").glob("*.wav"))
    texts = [line.split('"text": "')[1].split('"')[0] for line in (sp / "utterances.jsonl").read_text().splitlines()]
    src = WORK / f"ljspeech-{n}"
    if not (src / "metadata.csv").is_file():
        shutil.rmtree(src, ignore_errors=True)
        (src / "wavs").mkdir(parents=True)
        lines = []
        for i in range(n):
            uid = f"LJ{i // 1000:03d}-{i % 1000:04d}"
            os.link(wavs[i % len(wavs)], src / "wavs" / f"{uid}.wav")
            lines.append(f"{uid}|{texts[i % len(texts)]}|{texts[i % len(texts)]}")
        (src / "metadata.csv").write_text("\n".join(lines) + "\n")
    return src, wavs


def main(n: int = UTTERANCES) -> list[tuple[str, str, str]]:
    from higgs_ds.data.codec import AudioEncoder
    from higgs_ds.data.corpora import ImportOptions, import_corpus, write_manifest
    from higgs_ds.data.shards import validate_manifest

    src, wavs = ljspeech_layout(n)
    manifest = WORK / f"ljspeech-{n}.jsonl"
    t0 = time.perf_counter()
    utts, rejects = import_corpus("ljspeech", src, ImportOptions())
    write_manifest(manifest, utts)
    import_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    total, problems = validate_manifest(str(manifest), workers=4)
    validate_s = time.perf_counter() - t0
    assert len(utts) == n and not rejects and total == n and not problems, (len(utts), rejects[:3], problems[:3])

    fx = fixtures()
    enc = AudioEncoder(str(fx / "audio_tokenizer"), cache_dir=None, device="cpu")
    enc.encode_file(wavs[0])  # warm-up
    t0 = time.perf_counter()
    for w in wavs[1:6]:
        enc.encode_file(w)
    encode_rate = 5 / (time.perf_counter() - t0)
    rate = n / (import_s + validate_s)
    return [(f"import {n} LJSpeech utterances", f"{n / import_s:.0f}/s", f"{import_s:.1f} s"),
            ("  validate them (decode every file, pair references)", f"{n / validate_s:.0f}/s",
             f"{validate_s:.1f} s, 4 threads on {os.cpu_count()} cores"),
            ("  import + validate", f"{rate:.0f}/s", f"{rate / encode_rate:.0f}x the audio tokenizer's encoding "
                                                     f"({encode_rate:.1f} clips/s, fixture tokenizer, CPU)")]


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--utterances", type=int, default=UTTERANCES)
    rows = main(parser.parse_args().utterances)
    table("corpus import", rows)
