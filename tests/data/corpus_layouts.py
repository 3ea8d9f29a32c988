"""Corpora in their real on-disk layouts, made from espeak-ng speech converted by ffmpeg (mp3, flac, ogg/opus; other
rates and channel counts), each with the flaws its importer must reject. Every builder returns (src, expected):
the utterances and rejects the importer should find."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import tarfile
from pathlib import Path

import numpy as np
import soundfile as sf

from higgs_ds.data.sample_data import speak

CRLF_BOM = "\ufeff"


def convert(src: Path, dest: Path, rate: int, channels: int = 1) -> Path:
    """SRC re-encoded by ffmpeg into DEST's format (by suffix) at RATE Hz with CHANNELS channels."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    codec = {".opus": ["-c:a", "libopus"], ".ogg": ["-c:a", "libvorbis"]}.get(dest.suffix, [])
    subprocess.run(["ffmpeg", "-y", "-loglevel", "error", "-i", str(src), "-ar", str(rate), "-ac", str(channels),
                    *codec, str(dest)], check=True)
    return dest


def clips(speech: Path) -> list[tuple[Path, str, str]]:
    """(wav, text, speaker) of the session's espeak-ng speech."""
    utts = [json.loads(x) for x in (speech / "utterances.jsonl").read_text().splitlines()]
    return [(speech / u["audio"], u["text"], u["speaker"]) for u in utts]


def ljspeech(speech: Path, root: Path):
    src = root / "LJSpeech-1.1"
    lines = []
    for k, (wav, text, _) in enumerate(c for c in clips(speech) if c[2] == "spk0"):
        uid = f"LJ001-{k + 1:04d}"
        shutil.copy(wav, (src / "wavs").mkdir(parents=True, exist_ok=True) or src / "wavs" / f"{uid}.wav")
        lines.append(f'{uid}|{text} "quoted", 1st|{text} "quoted", first')
    lines.append("LJ001-0099|Missing audio.|Missing audio.")  # line 5: no wav
    lines.append("LJ001-0098|Original only.| ")  # line 6: normalized text empty (its clip exists)
    shutil.copy(wav, src / "wavs" / "LJ001-0098.wav")
    lines.append("LJ001-0097 no separators")  # line 7
    (src / "metadata.csv").write_bytes((CRLF_BOM + "\r\n".join(lines) + "\r\n").encode("utf-8"))
    return src, {"utterances": 4, "speakers": 1, "rejects": {
        f"{src / 'metadata.csv'}:5": f"audio file {(src / 'wavs' / 'LJ001-0099.wav').resolve()} does not exist",
        f"{src / 'metadata.csv'}:6": "the transcript is empty",
        f"{src / 'metadata.csv'}:7": "expected ID|text|normalized text, found 1 fields"},
        "text": ' "quoted", first', "language": "en"}


def libritts(speech: Path, root: Path):
    src = root / "LibriTTS_R"
    subset = src / "train-clean-100"
    speakers = {"spk0": "19", "spk1": "26"}
    made = []
    for k, (wav, text, spk) in enumerate(c for c in clips(speech) if c[2] in speakers):
        sid = speakers[spk]
        uid = f"{sid}_198_{k:06d}_000000"
        dest = subset / sid / "198" / f"{uid}.wav"
        convert(wav, dest, 24000)
        made.append((uid, dest, text))
    for uid, dest, text in made[:-2]:
        dest.with_name(f"{uid}.normalized.txt").write_text(text + "\n")
        dest.with_name(f"{uid}.original.txt").write_text(text.upper() + "\n")
    uid, dest, text = made[-2]  # this one only in the chapter's trans.tsv
    (dest.parent / "26_198.trans.tsv").write_text(f"{uid}\t{text.upper()}\t{text}\n")
    return src, {"utterances": 7, "speakers": 2, "rejects": {
        str(made[-1][1]): f"no transcript: neither {made[-1][0]}.normalized.txt nor a row in 26_198.trans.tsv"},
        "language": "en"}


def vctk(speech: Path, root: Path):
    src = root / "VCTK-Corpus-0.92"
    for k, (wav, text, spk) in enumerate(c for c in clips(speech) if c[2] in ("spk0", "spk2")):
        sid = {"spk0": "p225", "spk2": "p315"}[spk]
        uid = f"{sid}_{k + 1:03d}"
        for mic in ("mic1", "mic2"):
            convert(wav, src / "wav48_silence_trimmed" / sid / f"{uid}_{mic}.flac", 48000)
        if sid == "p225":  # p315 has no transcripts in VCTK 0.92
            (src / "txt" / sid).mkdir(parents=True, exist_ok=True)
            (src / "txt" / sid / f"{uid}.txt").write_text(text + "\n")
    (src / "speaker-info.txt").write_text("ID  AGE  GENDER  ACCENTS  REGION COMMENTS\np225  23  F    English    "
                                          "Southern  England\n")
    return src, {"utterances": 4, "speakers": 1, "reject_count": 4, "reject_reason": "no transcript",
                 "language": "en"}


def commonvoice(speech: Path, root: Path):
    src = root / "cv-corpus-19.0-2024-09-13" / "en"
    header = ["client_id", "path", "sentence_id", "sentence", "sentence_domain", "up_votes", "down_votes", "age",
              "gender", "accents", "variant", "locale", "segment"]
    rows, durations = [], ["clip\tduration[ms]"]
    for k, (wav, text, spk) in enumerate(clips(speech)[:8]):
        client = f"{abs(hash(spk)) % 10**12:012x}{spk}"
        name = f"common_voice_en_{1000 + k}.mp3"
        convert(wav, src / "clips" / name, 32000 if k % 2 else 48000, channels=2 if k == 0 else 1)
        rows.append([client, name, f"s{k}", f'{text} "so" he said', "", "2", "0", "", "", "", "", "en", ""])
        durations.append(f"{name}\t{int(round(sf.info(str(wav)).duration * 1000))}")
    rows.append([rows[0][0], "common_voice_en_9999.mp3", "s99", "   ", "", "2", "0", "", "", "", "", "en", ""])
    (src / "validated.tsv").write_text("\n".join("\t".join(r) for r in [header] + rows) + "\n")
    (src / "clip_durations.tsv").write_text("\n".join(durations) + "\n")
    return src, {"utterances": 8, "speakers": 2, "rejects": {f"{src / 'validated.tsv'}:10": "the transcript is empty"},
                 "language": "en", "durations": True, "text": '"so" he said'}


def commonvoice_mostly_single_clips(speech: Path, root: Path) -> Path:
    """A Common Voice locale shaped like the real ones: most clients (speakers) recorded one clip. Of 12 clips, 5
    come from 5 clients of one clip each, 4 from one client and 3 from another."""
    src = root / "cv-corpus-19.0-2024-09-13" / "cy"
    header = ["client_id", "path", "sentence_id", "sentence", "up_votes", "down_votes", "locale"]
    rows = []
    for k, (wav, text, _) in enumerate(clips(speech)[:12]):
        client = f"single{k}" if k < 5 else ("many-a" if k < 9 else "many-b")
        name = f"common_voice_cy_{2000 + k}.mp3"
        convert(wav, src / "clips" / name, 48000)
        rows.append([client, name, f"s{k}", text, "2", "0", "cy"])
    (src / "validated.tsv").write_text("\n".join("\t".join(r) for r in [header] + rows) + "\n")
    return src


def _tar(path: Path, members: dict[str, bytes]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as t:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))


def emilia(speech: Path, root: Path, tmp: Path):
    src = root / "Emilia"
    members = {}
    for k, (wav, text, spk) in enumerate(clips(speech)[:6]):
        key = f"EN_B00000_S0000{spk[-1]}_W{k:06d}"
        mp3 = convert(wav, tmp / f"{key}.mp3", 24000)
        members[f"{key}.mp3"] = mp3.read_bytes()
        members[f"{key}.json"] = json.dumps({"id": key, "wav": f"EN_B00000/EN_B00000_S0000{spk[-1]}/mp3/{key}.mp3",
                                             "text": f" {text}", "duration": sf.info(str(wav)).duration,
                                             "speaker": f"EN_B00000_S0000{spk[-1]}", "language": "en",
                                             "dnsmos": 3.3}).encode()
    members["EN_B00000_S00009_W000099.json"] = b"{}"  # an orphan json: no audio member
    _tar(src / "EN" / "EN-B000000.tar", members)
    zh = {}
    for k, text in enumerate(["今天天气很好。", "我们明天见。"]):
        key = f"ZH_B00000_S00000_W{k:06d}"
        speak(text, "cmn", tmp / f"{key}.wav")
        zh[f"{key}.mp3"] = convert(tmp / f"{key}.wav", tmp / f"{key}.mp3", 24000).read_bytes()
        zh[f"{key}.json"] = json.dumps({"id": key, "text": text, "duration": sf.info(str(tmp / f"{key}.wav")).duration,
                                        "speaker": "ZH_B00000_S00000", "language": "zh"},
                                       ensure_ascii=False).encode("utf-8")
    _tar(src / "ZH" / "ZH-B000000.tar", zh)
    return src, {"utterances": 8, "speakers": 3, "reject_count": 1, "reject_reason": "expected KEY.json and an audio",
                 "languages": ["en", "zh"], "durations": True, "text": "今天天气很好。"}


def hf_parquet(speech: Path, root: Path, tmp: Path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    src = root / "my-voices"
    audio, text, speaker = [], [], []
    for k, (wav, t, spk) in enumerate(clips(speech)[:6]):
        fmt = (".flac", ".opus", ".wav")[k % 3]
        data = convert(wav, tmp / f"clip{k}{fmt}", 16000 if fmt == ".wav" else 48000).read_bytes()
        audio.append({"bytes": data, "path": f"clip{k}{fmt}"})
        text.append(t)
        speaker.append(int(spk[-1]))
    audio.append({"bytes": None, "path": "lost.wav"})
    text.append("no audio bytes")
    speaker.append(0)
    table = pa.table({"audio": audio, "text": text, "speaker_id": speaker})
    (src / "data").mkdir(parents=True, exist_ok=True)
    pq.write_table(table, src / "data" / "train-00000-of-00001.parquet", row_group_size=4)
    return src, {"utterances": 6, "speakers": 2, "rejects": {
        f"{src / 'data' / 'train-00000-of-00001.parquet'}:row 6": "column 'audio' holds no audio bytes"}}


def _concatenate(paths: list[Path], dest: Path) -> list[tuple[float, float]]:
    """One recording of PATHS with 0.3 s of silence between them; returns each clip's (start, end) in seconds."""
    parts, spans, t = [], [], 0.0
    sr = sf.info(str(paths[0])).samplerate
    for p in paths:
        wav, _ = sf.read(str(p), dtype="float32")
        parts += [wav, np.zeros(int(0.3 * sr), np.float32)]
        spans.append((t, t + len(wav) / sr))
        t += len(wav) / sr + 0.3
    dest.parent.mkdir(parents=True, exist_ok=True)
    sf.write(dest, np.concatenate(parts), sr)
    return spans


def nemo(speech: Path, root: Path):
    src = root / "nemo"
    lines = []
    for wav, text, spk in clips(speech)[:4]:
        dest = src / "audio" / wav.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(wav, dest)
        lines.append({"audio_filepath": f"audio/{wav.name}", "text": text.lower(), "normalized_text": text,
                      "duration": round(sf.info(str(wav)).duration, 3), "speaker": int(spk[-1]) + 10, "lang": "en"})
    spk1 = [c for c in clips(speech) if c[2] == "spk1"][:2]
    spans = _concatenate([c[0] for c in spk1], src / "long" / "session1.wav")
    for (start, end), (_, text, _) in zip(spans, spk1):
        lines.append({"audio_filepath": str((src / "long" / "session1.wav").resolve()), "offset": start,
                      "duration": end - start, "text": text, "speaker": 11})
    (src / "train_manifest.json").write_text("\n".join(json.dumps(x) for x in lines) + "\n{broken\n")
    return src / "train_manifest.json", {"utterances": 6, "speakers": 2, "rejects": {
        f"{src / 'train_manifest.json'}:7": "not valid JSON"}, "durations": True}


def kaldi(speech: Path, root: Path):
    src = root / "espnet" / "data" / "train"
    src.mkdir(parents=True, exist_ok=True)
    spk2 = [c for c in clips(speech) if c[2] == "spk2"]
    spans = _concatenate([c[0] for c in spk2], root / "espnet" / "wav" / "rec_spk2.wav")
    scp = [f"rec_spk2 {(root / 'espnet' / 'wav' / 'rec_spk2.wav').resolve()}", "rec_pipe sox in.wav -t wav - |"]
    text, utt2spk, segments = [], [], []
    for k, ((start, end), (_, t, _)) in enumerate(zip(spans, spk2)):
        uid = f"spk2-rec_spk2-{k:04d}"
        text.append(f"{uid} {t}")
        utt2spk.append(f"{uid} spk2")
        segments.append(f"{uid} rec_spk2 {start:.3f} {end:.3f}")
    for k, (wav, t, _) in enumerate(c for c in clips(speech) if c[2] == "spk0"):
        uid = f"spk0-{k:04d}"
        scp.append(f"{uid} {wav.resolve()}")
        text.append(f"{uid} {t}")
        utt2spk.append(f"{uid} spk0")
    text.append("spk0-pipe Piped audio.")
    utt2spk.append("spk0-pipe spk0")
    segments.append("spk0-pipe rec_pipe 0.0 1.0")
    (src / "wav.scp").write_text("\n".join(scp) + "\n")
    (src / "text").write_bytes(("\r\n".join(text) + "\r\n").encode())
    (src / "utt2spk").write_text("\n".join(utt2spk) + "\n")
    (src / "segments").write_text("\n".join(segments) + "\n")
    return src, {"utterances": 8, "speakers": 2, "rejects": {
        f"{src / 'wav.scp'}:2": "rec_pipe: a command pipe; higgs-ds runs no shell commands"}}


def folder(speech: Path, root: Path):
    src = root / "voices"
    for k, (wav, text, spk) in enumerate(clips(speech)[4:12]):
        name = {"spk1": "alice", "spk2": "bob"}[spk]
        suffix = (".wav", ".opus", ".flac", ".mp3")[k % 4]
        dest = src / name / f"{k:03d}{suffix}"
        if suffix == ".wav":
            shutil.copy(wav, dest.parent.mkdir(parents=True, exist_ok=True) or dest)
        else:
            convert(wav, dest, 48000 if suffix == ".opus" else 44100, channels=2)  # opus takes 8-48 kHz rates
        dest.with_suffix(".lab" if k % 2 else ".txt").write_text(text)
    (src / "bob" / "untranscribed.wav").write_bytes((src / "bob" / "004.wav").read_bytes())
    return src, {"utterances": 8, "speakers": 2, "rejects": {
        str(src / "bob" / "untranscribed.wav"): "no transcript untranscribed.txt (or .lab) beside it"}}
