"""One reader per on-disk layout public speech corpora ship in, each yielding utterances and rejects
(corpus_entries). Readers of audio stored inside records (parquet, WebDataset tars, segments of longer recordings)
write it out to files under the audio directory."""

from __future__ import annotations

import csv
import json
import tarfile
from pathlib import Path
from typing import Iterator

from higgs_ds.data.chatml import Reject
from higgs_ds.data.corpus_entries import (AUDIO_SUFFIXES, Entry, ImportOptions, audio_dir, cut_segment, read_lines,
                                          read_text_file, require, utterance)
from higgs_ds.files import atomic_write

csv.field_size_limit(1 << 24)  # a transcript can be long; csv's default limit is 128 KiB


def ljspeech(src: Path, opts: ImportOptions) -> Iterator[Entry]:
    """LJSpeech-1.1: metadata.csv of `ID|transcription|normalized transcription` (no header, `|` never quoted),
    audio in wavs/ID.wav, one speaker. Two-column files (`ID|text`, the same layout many voices ship in) work too."""
    meta = require(src / "metadata.csv", "an LJSpeech folder holds metadata.csv and wavs/")
    for lineno, line in read_lines(meta):
        source = f"{meta}:{lineno}"
        fields = line.split("|")
        if len(fields) not in (2, 3):
            yield Reject(source, f"expected ID|text|normalized text, found {len(fields)} fields")
            continue
        text = fields[-1] if opts.text == "normalized" else fields[1]
        yield utterance(source, src / "wavs" / f"{fields[0]}.wav", text, "LJ", opts.language or "en")


def libritts(src: Path, opts: ImportOptions) -> Iterator[Entry]:
    """LibriTTS and LibriTTS-R: SUBSET/SPEAKER/CHAPTER/SPEAKER_CHAPTER_PARA_SENT.wav with .normalized.txt and
    .original.txt beside each clip (and SPEAKER_CHAPTER.trans.tsv: ID, original, normalized). SRC may be the
    corpus root or one subset."""
    wavs = sorted(src.rglob("*.wav"))
    if not wavs:
        raise FileNotFoundError(f"{src}: no .wav files (LibriTTS holds SUBSET/SPEAKER/CHAPTER/*.wav)")
    tsv_cache: dict[Path, dict[str, tuple[str, str]]] = {}
    for wav in wavs:
        uid = wav.name[:-len(".wav")]
        text_file = wav.with_name(f"{uid}.{opts.text}.txt")
        speaker = uid.split("_")[0]
        if text_file.is_file():
            yield utterance(str(text_file), wav, read_text_file(text_file), speaker, opts.language or "en")
            continue
        tsv = wav.with_name("_".join(uid.split("_")[:2]) + ".trans.tsv")
        if tsv not in tsv_cache:
            tsv_cache[tsv] = {}
            if tsv.is_file():
                for _, line in read_lines(tsv):
                    cols = line.split("\t")
                    if len(cols) >= 3:
                        tsv_cache[tsv][cols[0]] = (cols[1], cols[2])
        row = tsv_cache[tsv].get(uid)
        if row is None:
            yield Reject(str(wav), f"no transcript: neither {text_file.name} nor a row in {tsv.name}")
            continue
        yield utterance(f"{tsv}:{uid}", wav, row[1] if opts.text == "normalized" else row[0], speaker,
                        opts.language or "en")


def vctk(src: Path, opts: ImportOptions) -> Iterator[Entry]:
    """VCTK: 0.92 (wav48_silence_trimmed/SPEAKER/SPEAKER_NNN_mic1.flac, two microphones) or 0.80
    (wav48/SPEAKER/SPEAKER_NNN.wav), with txt/SPEAKER/SPEAKER_NNN.txt."""
    txt_root = require(src / "txt", "VCTK holds txt/ and wav48_silence_trimmed/ (0.92) or wav48/ (0.80)")
    if (src / "wav48_silence_trimmed").is_dir():
        clips = sorted((src / "wav48_silence_trimmed").glob(f"*/*_{opts.mic}.flac"))
        uid_of = {c: c.name[:-len(f"_{opts.mic}.flac")] for c in clips}
    else:
        clips = sorted(require(src / "wav48", "no wav48_silence_trimmed/ or wav48/").glob("*/*.wav"))
        uid_of = {c: c.stem for c in clips}
    for clip in clips:
        uid = uid_of[clip]
        speaker = clip.parent.name
        txt = txt_root / speaker / f"{uid}.txt"
        if not txt.is_file():
            yield Reject(str(clip), f"no transcript {txt}")  # VCTK ships some clips without one (e.g. p315)
            continue
        yield utterance(str(txt), clip, read_text_file(txt), speaker, opts.language or "en")


def commonvoice(src: Path, opts: ImportOptions) -> Iterator[Entry]:
    """Common Voice: LOCALE/{validated,train,dev,test,...}.tsv (tab-separated, a header naming client_id, path,
    sentence, locale, ...; no quoting) and LOCALE/clips/*.mp3; clip_durations.tsv (milliseconds) where shipped.
    SRC is the locale folder."""
    tsv = require(src / f"{opts.subset}.tsv", f"a Common Voice locale folder holds {opts.subset}.tsv and clips/")
    durations = {}
    if (src / "clip_durations.tsv").is_file():
        with open(src / "clip_durations.tsv", encoding="utf-8-sig", newline="") as f:
            for row in csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE):
                if len(row) == 2 and row[1].isdigit():
                    durations[row[0]] = int(row[1]) / 1000
    with open(tsv, encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        missing = {"client_id", "path", "sentence"} - set(reader.fieldnames or [])
        if missing:
            raise ValueError(f"{tsv}: header lacks {', '.join(sorted(missing))} (found {reader.fieldnames})")
        for k, row in enumerate(reader, 2):
            language = row.get("locale") or opts.language or src.name
            yield utterance(f"{tsv}:{k}", src / "clips" / row["path"], row["sentence"], row["client_id"], language,
                            durations.get(row["path"]))


def emilia(src: Path, opts: ImportOptions) -> Iterator[Entry]:
    """Emilia as the hub serves it: LANG/LANG-BNNNNNN.tar WebDataset shards whose samples are KEY.mp3 + KEY.json
    ({id, wav, text, duration, speaker, language, dnsmos}); the mp3s are written out under the audio directory.
    A folder of KEY.mp3 + KEY.json pairs (an unpacked shard) works too."""
    tars = sorted(p for p in src.rglob("*") if p.name.endswith((".tar", ".tar.gz")))
    if tars:
        for tar in tars:
            yield from _emilia_tar(tar, audio_dir(opts) / tar.name.split(".")[0], opts)
        return
    pairs = sorted(src.rglob("*.json"))
    if not pairs:
        raise FileNotFoundError(f"{src}: no Emilia .tar shards and no KEY.json + KEY.mp3 pairs")
    for meta in pairs:
        try:
            info = json.loads(meta.read_text(encoding="utf-8-sig"))
        except ValueError as e:
            yield Reject(str(meta), f"not valid JSON: {e}")
            continue
        yield _emilia_utterance(str(meta), meta.with_suffix(".mp3"), info, opts)


def _emilia_utterance(source: str, audio: Path, info, opts: ImportOptions) -> Entry:
    if not isinstance(info, dict):
        return Reject(source, "the .json member is not an object")
    return utterance(source, audio, info.get("text"), info.get("speaker"), info.get("language") or opts.language,
                     info.get("duration"))


def _emilia_tar(tar: Path, out: Path, opts: ImportOptions) -> Iterator[Entry]:
    samples = _webdataset_samples(tar)
    while True:
        try:
            key, members = next(samples)
        except StopIteration:
            return
        except TarBrokenOff as e:
            yield Reject(str(tar), str(e))
            return
        yield _emilia_sample(tar, key, members, out, opts)


class TarBrokenOff(Exception):
    pass


def _webdataset_samples(tar: Path) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {extension: bytes}) a sample at a time: WebDataset keeps a sample's members next to each other, so a
    shard of any size needs the memory of one sample. A tar that breaks off yields the samples before the break
    (members read whole), then raises TarBrokenOff."""
    key, members = None, {}
    try:
        with tarfile.open(tar, mode="r|*") as t:
            for m in t:
                if not m.isfile():
                    continue
                name, _, ext = m.name.rpartition("/")[2].partition(".")  # WebDataset: keys end at the first dot
                if name != key and members:
                    yield key, members
                    members = {}
                key = name
                members[ext] = t.extractfile(m).read()
    except (tarfile.TarError, OSError, EOFError) as e:
        if members:
            yield key, members
        raise TarBrokenOff(f"not a readable tar after {'sample ' + key if key else 'its start'}: {e}") from None
    if members:
        yield key, members


def _emilia_sample(tar: Path, key: str, members: dict[str, bytes], out: Path, opts: ImportOptions) -> Entry:
    source = f"{tar}:{key}"
    audio_ext = next((e for e in ("mp3", "wav", "flac", "opus", "ogg") if e in members), None)
    if "json" not in members or audio_ext is None:
        return Reject(source, f"expected KEY.json and an audio member next to each other, found {sorted(members)}")
    try:
        info = json.loads(members["json"].decode("utf-8-sig"))
    except (ValueError, UnicodeDecodeError) as e:
        return Reject(source, f"KEY.json is not valid JSON: {e}")
    out.mkdir(parents=True, exist_ok=True)
    audio = out / f"{key}.{audio_ext}"
    if not audio.is_file() or audio.stat().st_size != len(members[audio_ext]):
        atomic_write(audio, members[audio_ext])
    return _emilia_utterance(source, audio, info, opts)


PARQUET_TEXT = ("text", "normalized_text", "sentence", "transcription", "transcript", "text_normalized")


PARQUET_SPEAKER = ("speaker_id", "speaker", "client_id", "spk_id", "speaker_name")


PARQUET_LANGUAGE = ("language", "locale", "lang")


def hf_parquet(src: Path, opts: ImportOptions) -> Iterator[Entry]:
    """Hugging Face datasets stored as parquet (data/*.parquet, or SPLIT-NNNNN-of-NNNNN.parquet): an audio column
    of {bytes, path} structs, a text and a speaker column (detected from the usual names, or named with
    --text-column / --speaker-column). Audio bytes are written out under the audio directory."""
    import pyarrow.parquet as pq

    files = [src] if src.is_file() else sorted(src.rglob("*.parquet"))
    if not files:
        raise FileNotFoundError(f"{src}: no .parquet files")
    for path in files:
        pf = pq.ParquetFile(path)
        names = pf.schema_arrow.names
        audio_col = opts.audio_column or ("audio" if "audio" in names else None)
        text_col = opts.text_column or next((c for c in PARQUET_TEXT if c in names), None)
        speaker_col = opts.speaker_column or next((c for c in PARQUET_SPEAKER if c in names), None)
        language_col = opts.language_column or next((c for c in PARQUET_LANGUAGE if c in names), None)
        for what, col in (("audio", audio_col), ("text", text_col), ("speaker", speaker_col)):
            if col is None or col not in names:
                raise ValueError(f"{path}: no {what} column among {names}; name it with --{what}-column")
        out = audio_dir(opts) / path.stem
        out.mkdir(parents=True, exist_ok=True)
        row = 0
        columns = [c for c in (audio_col, text_col, speaker_col, language_col) if c]
        for batch in pf.iter_batches(batch_size=256, columns=columns):
            for record in batch.to_pylist():
                source = f"{path}:row {row}"
                audio = record[audio_col]
                if not isinstance(audio, dict) or not audio.get("bytes"):
                    yield Reject(source, f"column {audio_col!r} holds no audio bytes")
                else:
                    suffix = Path(audio.get("path") or "").suffix.lower()
                    dest = out / f"{row:08d}{suffix if suffix in AUDIO_SUFFIXES else '.wav'}"
                    if not dest.is_file() or dest.stat().st_size != len(audio["bytes"]):
                        atomic_write(dest, audio["bytes"])
                    language = record.get(language_col) if language_col else None
                    yield utterance(source, dest, record[text_col], None if record[speaker_col] is None else
                                    str(record[speaker_col]), language or opts.language)
                row += 1


def nemo(src: Path, opts: ImportOptions) -> Iterator[Entry]:
    """A NeMo manifest: JSON lines with audio_filepath (relative to the manifest, or absolute), text (and
    normalized_text), duration, and optionally speaker, lang and offset (a segment of a longer recording, cut
    out to a file under the audio directory)."""
    manifest = src if src.is_file() else require(src / "manifest.json", "pass the NeMo manifest file")
    for lineno, line in read_lines(manifest):
        source = f"{manifest}:{lineno}"
        try:
            obj = json.loads(line)
        except ValueError as e:
            yield Reject(source, f"not valid JSON: {e}")
            continue
        if not isinstance(obj, dict) or not isinstance(obj.get("audio_filepath"), str):
            yield Reject(source, "needs a string audio_filepath")
            continue
        audio = Path(obj["audio_filepath"])
        audio = audio if audio.is_absolute() else manifest.parent / audio
        text = obj.get("normalized_text") if opts.text == "normalized" and obj.get("normalized_text") else \
            obj.get("text")
        speaker = obj.get("speaker", obj.get("speaker_id"))
        if obj.get("offset") is not None and audio.is_file():
            try:
                audio = cut_segment(audio, float(obj["offset"]), float(obj["duration"]), audio_dir(opts))
            except (ValueError, KeyError, TypeError, RuntimeError) as e:
                yield Reject(source, f"segment of {audio}: {e}")
                continue
        yield utterance(source, audio, text, None if speaker is None else str(speaker),
                        obj.get("lang") or obj.get("language") or opts.language, obj.get("duration"))


def kaldi(src: Path, opts: ImportOptions) -> Iterator[Entry]:
    """A Kaldi / ESPnet data directory: wav.scp (ID PATH), text (UTT transcript), utt2spk (UTT SPEAKER), and
    optionally segments (UTT RECORDING START END, cut out to files under the audio directory) and utt2lang.
    Command pipes in wav.scp (`... |`) are refused: higgs-ds runs no shell commands."""
    def table(name: str, required: bool = True) -> dict[str, tuple[str, str]]:
        path = src / name
        if not path.is_file():
            if required:
                raise FileNotFoundError(f"{path} does not exist: a Kaldi data directory holds wav.scp, text, utt2spk")
            return {}
        out = {}
        for lineno, line in read_lines(path):
            key, _, value = line.strip().partition(" ")
            out[key] = (value.strip(), f"{path}:{lineno}")
        return out

    wav_scp, texts, utt2spk = table("wav.scp"), table("text"), table("utt2spk")
    segments, utt2lang = table("segments", required=False), table("utt2lang", required=False)
    for utt, (text, source) in texts.items():
        if utt not in utt2spk:
            yield Reject(source, f"utterance {utt} is not in utt2spk")
            continue
        recording, start, end = utt, None, None
        if utt in segments:
            recording, start, end = (segments[utt][0].split() + [None, None])[:3]
        if recording not in wav_scp:
            yield Reject(source, f"{'recording' if utt in segments else 'utterance'} {recording} is not in wav.scp")
            continue
        path, scp_source = wav_scp[recording]
        if path.endswith("|"):
            yield Reject(scp_source, f"{recording}: a command pipe; higgs-ds runs no shell commands (write the "
                                     f"audio to files and list their paths)")
            continue
        audio = Path(path) if Path(path).is_absolute() else src / path
        if start is not None and audio.is_file():
            try:
                audio = cut_segment(audio, float(start), float(end) - float(start), audio_dir(opts))
            except (ValueError, TypeError, RuntimeError) as e:
                yield Reject(segments[utt][1], f"segment {utt} of {audio}: {e}")
                continue
        yield utterance(source, audio, text, utt2spk[utt][0], utt2lang.get(utt, (opts.language,))[0])


def folder(src: Path, opts: ImportOptions) -> Iterator[Entry]:
    """SPEAKER/NAME.{wav,flac,mp3,ogg,opus} with its transcript in NAME.txt (or NAME.lab) beside it, one folder per
    speaker (audio directly in SRC belongs to a speaker named after SRC)."""
    clips = sorted(p for p in src.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file())
    if not clips:
        raise FileNotFoundError(f"{src}: no audio files ({', '.join(AUDIO_SUFFIXES)})")
    for clip in clips:
        transcript = next((t for t in (clip.with_suffix(".txt"), clip.with_suffix(".lab")) if t.is_file()), None)
        if transcript is None:
            yield Reject(str(clip), f"no transcript {clip.with_suffix('.txt').name} (or .lab) beside it")
            continue
        rel = clip.relative_to(src)
        speaker = rel.parts[0] if len(rel.parts) > 1 else src.resolve().name
        try:
            text = read_text_file(transcript)
        except UnicodeDecodeError as e:
            yield Reject(str(transcript), f"not UTF-8 text: {e}")
            continue
        yield utterance(str(transcript), clip, text, speaker, opts.language)
