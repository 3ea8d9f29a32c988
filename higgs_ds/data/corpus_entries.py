"""What a corpus importer yields (an utterance or a reject naming the corpus file and line) and the file helpers
the importers share."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from higgs_ds.data.chatml import Reject
from higgs_ds.files import atomic_write

AUDIO_SUFFIXES = (".wav", ".flac", ".mp3", ".ogg", ".opus")


@dataclass
class ImportOptions:
    text: str = "normalized"  # normalized | original, for corpora that ship both
    audio_dir: Path | None = None  # where audio held inside records is written (default: beside the manifest)
    language: str | None = None  # the corpus's language when it does not say (ljspeech, vctk, libritts: en)
    mic: str = "mic1"  # vctk 0.92: mic1 or mic2
    subset: str = "validated"  # commonvoice: validated, train, dev, test, ... (its .tsv)
    text_column: str | None = None  # hf-parquet column names (default: detected)
    speaker_column: str | None = None
    audio_column: str | None = None
    language_column: str | None = None


Entry = dict | Reject  # an utterance ({audio, text, speaker, [language], [duration]}) or a reject


def utterance(source: str, audio: Path, text: str | None, speaker: str | None, language: str | None = None,
              duration: float | None = None) -> Entry:
    """An utterance, or the reject saying why not (missing file, empty text, no speaker)."""
    text = (text or "").strip()
    if not text:
        return Reject(source, "the transcript is empty")
    if not speaker or not str(speaker).strip():
        return Reject(source, "no speaker")
    if not audio.is_file():
        return Reject(source, f"audio file {audio} does not exist")
    out = {"audio": str(audio.resolve()), "text": text, "speaker": str(speaker).strip()}
    if language:
        out["language"] = language
    if duration is not None:
        out["duration"] = round(float(duration), 3)
    return out


def read_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, line) of a UTF-8 text file, BOM and CR LF handled, blank lines skipped."""
    with open(path, encoding="utf-8-sig", newline=None) as f:
        for lineno, line in enumerate(f, 1):
            if line.strip():
                yield lineno, line.rstrip("\n")


def read_text_file(path: Path) -> str:
    return path.read_text(encoding="utf-8-sig").strip()


def require(path: Path, what: str) -> Path:
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: {what}")
    return path


def audio_dir(opts: ImportOptions) -> Path:
    if opts.audio_dir is None:
        raise ValueError("this corpus holds audio inside its records: pass --audio-dir (where to write it)")
    return opts.audio_dir


def cut_segment(audio: Path, start: float, seconds: float, out_dir: Path) -> Path:
    """START..START+SECONDS of AUDIO as a wav under OUT_DIR (written once)."""
    import soundfile as sf

    if seconds <= 0 or start < 0:
        raise ValueError(f"start {start} s and duration {seconds} s are not a segment")
    dest = out_dir / "segments" / audio.stem / f"{audio.stem}_{int(round(start * 1000)):09d}_" \
                                               f"{int(round(seconds * 1000)):07d}.wav"
    if dest.is_file():
        return dest
    info = sf.info(str(audio))
    first = int(round(start * info.samplerate))
    frames = int(round(seconds * info.samplerate))
    if first + frames > info.frames + info.samplerate // 100:  # 10 ms of rounding
        raise ValueError(f"ends at {start + seconds:.2f} s, after the recording's "
                         f"{info.frames / info.samplerate:.2f} s")
    wav, sr = sf.read(str(audio), start=first, frames=frames, dtype="float32", always_2d=True)
    dest.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    sf.write(buf, wav, sr, format="WAV", subtype="PCM_16")
    atomic_write(dest, buf.getvalue())
    return dest
