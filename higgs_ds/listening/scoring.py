"""How generated speech compares with its prompt: speaker similarity to the reference clip, intelligibility (WER/CER
of an ASR transcript against the text), naturalness (DNSMOS) and duration, per prompt and as means.

The default models run offline: resemblyzer's speaker encoder and DNSMOS's ONNX models ship inside their wheels.
ASR needs a model (a local directory or a hub id: Whisper or any transformers ASR model); without one, WER and
CER are reported as not measured. `speaker_model` may name a transformers x-vector model (e.g. a WavLM speaker
verification checkpoint) instead of resemblyzer.
"""

from __future__ import annotations

import math
import re
import unicodedata
from dataclasses import dataclass

import numpy as np

METRICS = ("similarity", "wer", "cer", "dnsmos", "dnsmos_sig", "dnsmos_bak", "seconds", "duration_ratio")


def normalize_text(text: str) -> str:
    """Case-folded, punctuation removed, whitespace collapsed; any script (no English-only rules)."""
    text = unicodedata.normalize("NFKC", text).casefold()
    text = "".join(" " if unicodedata.category(c)[0] in "PS" else c for c in text)
    return re.sub(r"\s+", " ", text).strip()


def error_rates(reference: str, hypothesis: str) -> tuple[float, float]:
    """(WER, CER) of HYPOTHESIS against REFERENCE after normalize_text."""
    import jiwer

    ref, hyp = normalize_text(reference), normalize_text(hypothesis)
    if not ref:
        raise ValueError("the reference text is empty after normalisation")
    if not hyp:
        return 1.0, 1.0
    return float(jiwer.wer(ref, hyp)), float(jiwer.cer(ref, hyp))


def resample(wav: np.ndarray, sr: int, target: int) -> np.ndarray:
    import librosa

    wav = np.asarray(wav, dtype=np.float32)
    return wav if sr == target else librosa.resample(wav, orig_sr=sr, target_sr=target).astype(np.float32)


@dataclass
class Clip:
    """Audio to score: float32 mono samples and their rate."""

    wav: np.ndarray
    sr: int

    @classmethod
    def load(cls, path) -> "Clip":
        from higgs_ds.audio import read_audio

        return cls(*read_audio(path))

    @property
    def seconds(self) -> float:
        return len(self.wav) / self.sr


class SpeakerEncoder:
    """Speaker embeddings: resemblyzer's GE2E encoder (in its wheel), or a transformers x-vector model."""

    def __init__(self, model: str | None = None, device: str = "cpu"):
        self.name = model or "resemblyzer"
        self.device = device
        if model is None:
            from resemblyzer import VoiceEncoder

            self._encoder = VoiceEncoder(device, verbose=False)
        else:
            from transformers import AutoFeatureExtractor, AutoModelForAudioXVector

            from higgs_ds.checkpoints.hub import resolve

            path = str(resolve(model, "speaker_model").path)
            self._features = AutoFeatureExtractor.from_pretrained(path)
            self._encoder = AutoModelForAudioXVector.from_pretrained(path).to(device).eval()

    def embed(self, clip: Clip) -> np.ndarray:
        if self.name == "resemblyzer":
            from resemblyzer import preprocess_wav

            wav = preprocess_wav(resample(clip.wav, clip.sr, 16000), source_sr=16000)
            if len(wav) < 16000 * 0.3:  # its voice activity trim left (almost) nothing: embed the clip as it is
                wav = resample(clip.wav, clip.sr, 16000)
            if not np.any(wav):
                raise ValueError("the clip is silent")
            return self._encoder.embed_utterance(wav)
        import torch

        rate = self._features.sampling_rate
        inputs = self._features(resample(clip.wav, clip.sr, rate), sampling_rate=rate, return_tensors="pt")
        with torch.no_grad():
            e = self._encoder(**{k: v.to(self.device) for k, v in inputs.items()}).embeddings[0]
        return torch.nn.functional.normalize(e, dim=-1).cpu().numpy()

    def similarity(self, a: Clip, b: Clip) -> float:
        ea, eb = self.embed(a), self.embed(b)
        return float(np.dot(ea, eb) / (np.linalg.norm(ea) * np.linalg.norm(eb)))


class Transcriber:
    """ASR through a transformers pipeline (Whisper or any ASR model), from a local directory or a hub id."""

    def __init__(self, model: str, device: str = "cpu"):
        from transformers import pipeline

        from higgs_ds.checkpoints.hub import resolve

        checkpoint = resolve(model, "asr_model")
        self.name = checkpoint.spec
        self._pipe = pipeline("automatic-speech-recognition", model=str(checkpoint.path), device=device)
        self._whisper = self._pipe.model.config.model_type == "whisper"

    def __call__(self, clip: Clip, language: str | None = None) -> str:
        wav = resample(clip.wav, clip.sr, 16000)
        kwargs = {}
        if self._whisper:
            kwargs["generate_kwargs"] = {"task": "transcribe", **({"language": language} if language else {})}
        if len(wav) > 30 * 16000:
            kwargs["chunk_length_s"] = 30
        return self._pipe({"raw": wav, "sampling_rate": 16000}, **kwargs)["text"].strip()


class Naturalness:
    """DNSMOS P.835 (overall, signal, background) on a 1-5 scale: speechmos's model class and the ONNX files in its
    wheel, in sessions that use this process's torch thread count. speechmos's own `run` opens them with a thread
    per core, so eight ranks on a node would each start one per core."""

    def __init__(self):
        import os

        import onnxruntime as ort
        import torch
        from speechmos import dnsmos as speechmos_dnsmos

        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = torch.get_num_threads(), 1
        models = os.path.join(os.path.dirname(speechmos_dnsmos.__file__), "dnsmos_models")
        self._model = speechmos_dnsmos.DNSMOS.__new__(speechmos_dnsmos.DNSMOS)  # its __init__ takes no options
        self._model.primary_model_path = os.path.join(models, "sig_bak_ovr.onnx")
        self._model.onnx_sess = ort.InferenceSession(self._model.primary_model_path, options,
                                                     providers=["CPUExecutionProvider"])
        self._model.p808_onnx_sess = ort.InferenceSession(os.path.join(models, "model_v8.onnx"), options,
                                                          providers=["CPUExecutionProvider"])

    def __call__(self, clip: Clip) -> dict[str, float]:
        wav = np.clip(resample(clip.wav, clip.sr, 16000), -1.0, 1.0)
        out = self._model(wav, 16000, False)
        return {"dnsmos": float(out["ovrl_mos"]), "dnsmos_sig": float(out["sig_mos"]),
                "dnsmos_bak": float(out["bak_mos"])}


class Scorer:
    """Scores generated clips; each metric that cannot be measured is None with the reason in `notes`."""

    def __init__(self, asr_model: str | None = None, speaker_model: str | None = None, device: str = "cpu",
                 naturalness: bool = True):
        self.speaker = SpeakerEncoder(speaker_model, device)
        self.asr = Transcriber(asr_model, device) if asr_model else None
        self.naturalness = Naturalness() if naturalness else None

    def describe(self) -> dict:
        return {"speaker_model": self.speaker.name, "asr_model": self.asr.name if self.asr else None,
                "naturalness": "dnsmos" if self.naturalness is not None else None}

    def score(self, clip: Clip, reference: Clip | None, text: str, truth: Clip | None = None,
              language: str | None = None) -> dict:
        row: dict = {m: None for m in METRICS}
        notes = []
        row["seconds"] = round(clip.seconds, 3)
        if truth is not None and truth.seconds > 0:
            row["duration_ratio"] = clip.seconds / truth.seconds
        if reference is not None:
            try:
                row["similarity"] = self.speaker.similarity(clip, reference)
            except ValueError as e:
                notes.append(f"similarity: {e}")
        if self.asr is not None:
            row["asr_text"] = self.asr(clip, language)
            row["wer"], row["cer"] = error_rates(text, row["asr_text"])
        else:
            notes.append("wer/cer: not measured (no ASR model; pass an ASR model to measure them)")
        if self.naturalness is not None:
            row.update(self.naturalness(clip))
        if notes:
            row["notes"] = notes
        return row


def means(rows: list[dict]) -> dict:
    """The mean of each metric over the rows that measured it (None where none did), and how many did."""
    out = {}
    for m in METRICS:
        values = [r[m] for r in rows if r.get(m) is not None and math.isfinite(r[m])]
        out[m] = float(np.mean(values)) if values else None
        out[f"{m}_n"] = len(values)
    return out


def score_rows(scorer: Scorer, rows: list[dict], progress: bool = False, ground_truth: bool = True) -> dict:
    """Scores of synthesis rows (higgs_ds.listening.synthesis.synthesize_prompts): per prompt, for the generated clip and,
    where the prompt has ground truth (and GROUND_TRUTH), for it too (the ceiling), then means of both."""
    from tqdm import tqdm

    scored = []
    for row in tqdm(rows, desc="score", unit="prompt", disable=not progress, leave=False):
        out = {"id": row["id"], "text": row["text"], "wav": row.get("wav"), "ref_audio": row["ref_audio"][0],
               "target_audio": row.get("target_audio")}
        if "error" in row:
            out["error"] = row["error"]
            scored.append(out)
            continue
        reference = Clip.load(row["ref_audio"][0]) if row["ref_audio"] and row["ref_audio"][0] else None
        truth = Clip.load(row["target_audio"]) if row.get("target_audio") else None
        out["generated"] = scorer.score(Clip.load(row["wav"]), reference, row["text"], truth, row.get("language"))
        if truth is not None and ground_truth:
            out["ground_truth"] = scorer.score(truth, reference, row["text"], truth, row.get("language"))
        scored.append(out)
    ok = [r for r in scored if "error" not in r]
    return {"scorer": scorer.describe(), "prompts": scored, "failed": len(scored) - len(ok),
            "mean": means([r["generated"] for r in ok]),
            "ground_truth_mean": means([r["ground_truth"] for r in ok if "ground_truth" in r])}
