"""Speech from a model and a voice prompt: for transformers' HiggsAudioV2ForConditionalGeneration, the prompt boson's
serve engine builds, through transformers' generate (NativeSynthesizer, models/higgs_v2/generation.py); for Higgs TTS
3, its own prompt and decoding loop (V3Synthesizer, models/higgs_v3/generation.py). `synthesizer_for` picks by the
model's config. Used by `higgs-ds synthesize` and by the listening evaluation during
training (with the weights being trained)."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from higgs_ds.audio import AudioError, read_audio
from higgs_ds.data.chatml import RecordError, chatml_tokens
from higgs_ds.data.collate import IGNORE, Sample
from higgs_ds.data.prompt_formats import prompt_ids, tts3_ids
from higgs_ds.listening.prompts import Prompt, Reference

log = logging.getLogger(__name__)
ASSISTANT_POSTFIX = "<|start_header_id|>assistant<|end_header_id|>\n\n"


class SynthesisError(ValueError):
    """One prompt cannot be generated; the message names the prompt and what is wrong."""


@dataclass
class SynthesisConfig:
    """Sampling settings; the defaults are boson_multimodal's (HiggsAudioServeEngine.generate)."""

    max_new_tokens: int = 750  # audio frames (25 a second) plus any text tokens after the audio
    temperature: float = 0.7  # 0: greedy
    top_p: float = 0.95
    top_k: int | None = None
    ras_win_len: int = 7  # repetition-aware sampling window (0: off)
    ras_win_max_num_repeat: int = 2
    seed: int = 0
    force_audio: bool = True  # start the answer with <|audio_out_bos|>: a cloning prompt asks for speech


@dataclass
class Synthesis:
    prompt: Prompt
    audio: np.ndarray  # float32 mono
    sample_rate: int
    codes: np.ndarray  # (num_codebooks, frames) int16, delay pattern reverted: what the audio decodes from
    generate_seconds: float
    text: str  # text the model generated besides the audio (usually empty)

    @property
    def frames(self) -> int:
        return int(self.codes.shape[1])

    @property
    def seconds(self) -> float:
        return len(self.audio) / self.sample_rate

    @property
    def real_time_factor(self) -> float:
        """Seconds of compute per second of audio (below 1: faster than real time)."""
        return self.generate_seconds / max(1e-9, self.seconds)


class Synthesizer:
    """Generates one prompt at a time with a model already in memory: a base model, one with a peft adapter applied
    in place, a merged one, or the model being trained. What every model class shares: the prompt's ChatML ids and
    its references' codes, checked against the context; `inputs` and `_generate` are the class's own."""

    generator = ""
    context_limit: int
    num_codebooks: int
    codebook_size: int

    def __init__(self, model, tokenizer, audio_tokenizer):
        import torch

        self.model, self.tokenizer, self.audio_tokenizer = model, tokenizer, audio_tokenizer
        param = next(model.parameters())
        self.device, self.dtype = param.device, param.dtype
        self._torch = torch

    @property
    def sample_rate(self) -> int:
        return int(self.audio_tokenizer.sampling_rate)

    def reference_codes(self, ref: Reference, prompt: Prompt):
        """Codes of a reference: stored ones as they are, a file encoded as the serve engine encodes it."""
        import librosa

        torch = self._torch
        if ref.codes is not None:
            codes = np.asarray(ref.codes)
            if codes.ndim != 2 or codes.shape[0] < self.num_codebooks:
                raise SynthesisError(f"{prompt.source}: reference codes have shape {codes.shape}, the model reads "
                                     f"{self.num_codebooks} codebooks")
            return torch.as_tensor(codes[:self.num_codebooks].astype(np.int64))
        try:
            read_audio(ref.audio)  # a clear error for a missing or broken file before librosa's own
            wav, _ = librosa.load(ref.audio, sr=self.sample_rate)
        except AudioError as e:
            raise SynthesisError(f"{prompt.source}: reference clip: {e}") from None
        except Exception as e:  # audioread/soundfile raise many kinds for a broken file
            raise SynthesisError(f"{prompt.source}: reference clip {ref.audio} does not decode: {e}") from None
        if len(wav) == 0:
            raise SynthesisError(f"{prompt.source}: reference clip {ref.audio} holds no audio")
        return self.audio_tokenizer.encode(wav, self.sample_rate).squeeze(0).cpu()

    def prompt_ids_and_codes(self, prompt: Prompt, cfg: SynthesisConfig):
        """The prompt's ChatML token ids up to the answer, and its reference clips' codes; checked to fit the
        context with the new tokens."""
        if not prompt.text.strip():
            raise SynthesisError(f"{prompt.source}: the text to speak is empty")
        if not prompt.refs:
            raise SynthesisError(f"{prompt.source}: no reference clip")
        try:
            ids, _ = chatml_tokens({"messages": prompt.messages(), "start_index": 0}, len(prompt.refs),
                                   self.tokenizer)
        except RecordError as e:
            raise SynthesisError(f"{prompt.source}: {e}") from None
        postfix = ASSISTANT_POSTFIX + ("<|audio_out_bos|>" if cfg.force_audio else "")
        ids = list(ids) + self.tokenizer.encode(postfix, add_special_tokens=False)
        codes = [self.reference_codes(r, prompt) for r in prompt.refs]
        # each clip takes its frames plus the delay pattern's codebooks - 1 and a stream bos and eos
        length = len(ids) + sum(c.shape[1] + self.num_codebooks + 1 for c in codes)
        if length + cfg.max_new_tokens > self.context_limit:
            raise SynthesisError(f"{prompt.source}: the prompt takes {length} positions (references "
                                 f"{sum(c.shape[1] for c in codes) / self.audio_tokenizer.tps:.1f} s); with "
                                 f"max_new_tokens {cfg.max_new_tokens} that is over the model's context of "
                                 f"{self.context_limit}: use a shorter reference or fewer new tokens")
        return ids, codes

    def inputs(self, prompt: Prompt, cfg: SynthesisConfig):
        raise NotImplementedError

    def _generate(self, inputs, cfg: SynthesisConfig) -> tuple[str, list, list]:
        """(text generated besides the audio, waveforms, codes of each audio segment)."""
        raise NotImplementedError

    def generate(self, prompt: Prompt, cfg: SynthesisConfig) -> Synthesis:
        inputs = self.inputs(prompt, cfg)
        was_training = self.model.training
        self.model.eval()
        t0 = time.perf_counter()
        try:
            text, waves, segments = self._generate(inputs, cfg)
        except Exception as e:  # a generate can fail on token sequences it never expects (text sampled as audio)
            raise SynthesisError(f"{prompt.source}: generation failed inside {self.generator} "
                                 f"({type(e).__name__}: {str(e)[:300]})") from e
        finally:
            self.model.train(was_training)
        seconds = time.perf_counter() - t0
        if not waves:
            raise SynthesisError(f"{prompt.source}: the model generated no audio (in {seconds:.1f} s)")
        return Synthesis(prompt, np.concatenate(waves).astype(np.float32), self.sample_rate,
                         np.concatenate(segments, axis=1), seconds, text)


class NativeSynthesizer(Synthesizer):
    """Higgs-Audio v2: the same prompts and references through HiggsAudioV2ForConditionalGeneration and transformers' generate
    (batch size 1 too); sampled under a seed of its own without touching the caller's random state."""

    generator = "transformers' generate"

    def __init__(self, model, tokenizer, audio_tokenizer):
        from higgs_ds.models.higgs_v2.backend import settings_for_tokenizer

        super().__init__(model, tokenizer, audio_tokenizer)
        config = model.config
        self.context_limit = config.max_position_embeddings
        self.num_codebooks, self.codebook_size = config.num_codebooks, config.codebook_size - 2
        self.eos, self.audio_token_id = config.audio_stream_eos_id, config.audio_token_id
        self.settings = settings_for_tokenizer(config, tokenizer)

    def inputs(self, prompt: Prompt, cfg: SynthesisConfig):
        from higgs_ds.models.higgs_v2.generation import prompt_inputs

        ids, codes = self.prompt_ids_and_codes(prompt, cfg)
        return prompt_inputs(self.settings, self.audio_token_id, ids,
                             [c.numpy().astype(np.int64) for c in codes]).to(self.device)

    def _generate(self, inputs, cfg: SynthesisConfig):
        from higgs_ds.models.higgs_v2.generation import generate_stream, stream_codes

        torch = self._torch
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(cfg.seed)
            stream = generate_stream(self.model, inputs, cfg.max_new_tokens, cfg.temperature, cfg.top_p, cfg.top_k,
                                     cfg.ras_win_len, cfg.ras_win_max_num_repeat)
        codes = stream_codes(stream, self.codebook_size, self.eos)
        if codes.shape[1] == 0:
            return "", [], []
        with torch.no_grad():
            wave = self.audio_tokenizer.decode(torch.from_numpy(codes).unsqueeze(0).to(self.device))[0, 0]
        return "", [wave], [codes.astype(np.int16)]


class V3Synthesizer(Synthesizer):
    """HiggsTTS3 and our own decoding loop (models/higgs_v3/generation.py), sampled under a seed of its own without
    touching the caller's random state. Top-p, top-k and the temperature apply; the repetition-aware window of v2's
    serve engine does not (no v3 port has it)."""

    generator = "higgs_ds' Higgs TTS 3 decoding loop"

    def __init__(self, model, tokenizer, audio_tokenizer):
        from higgs_ds.models.higgs_v3.inputs import V3Collator

        super().__init__(model, tokenizer, audio_tokenizer)
        self.audio = model.audio
        self.context_limit = int(model.config["text_config"].get("max_position_embeddings", 40960))
        self.num_codebooks, self.codebook_size = self.audio.num_codebooks, self.audio.codebook_size - 2
        self.ids = tts3_ids(tokenizer)
        self.collator = V3Collator(self.audio, self.ids["<|audio|>"], tokenizer.pad_token_id or 0)

    def inputs(self, prompt: Prompt, cfg: SynthesisConfig):
        if not prompt.text.strip():
            raise SynthesisError(f"{prompt.source}: the text to speak is empty")
        if len(prompt.refs) > 1:
            raise SynthesisError(f"{prompt.source}: Higgs TTS 3's prompt holds one reference clip, this one has "
                                 f"{len(prompt.refs)}")

        def encode(text):
            return self.tokenizer.encode(text, add_special_tokens=False) if text else None

        ref = prompt.refs[0] if prompt.refs else None
        ids = prompt_ids(self.ids, encode(prompt.text), encode(ref.text) if ref else None, ref is not None)[:-1]
        codes = self.reference_codes(ref, prompt).numpy() if ref else np.zeros((self.num_codebooks, 0), np.int64)
        frames = np.array([codes.shape[1]] if ref else [], np.int64)
        input_ids, positions, rows = self.collator.prompt_tensors(Sample(np.array(ids, np.int64),
                                                                         np.full(len(ids), IGNORE), codes, frames))
        length = input_ids.shape[1]  # the reference expanded into its delayed rows
        if length + cfg.max_new_tokens > self.context_limit:
            raise SynthesisError(f"{prompt.source}: the prompt takes {length} positions; with max_new_tokens "
                                 f"{cfg.max_new_tokens} that is over the model's context of {self.context_limit}")
        return input_ids.to(self.device), positions.to(self.device), rows.to(self.device)

    def _generate(self, inputs, cfg: SynthesisConfig):
        from higgs_ds.models.higgs_v3.generation import Sampling, codes_of, generate_rows

        torch = self._torch
        input_ids, positions, rows = inputs
        generator = torch.Generator(device=self.device).manual_seed(cfg.seed)
        with torch.no_grad():
            embeds = self.model.embed(input_ids, positions, rows)
            generated = generate_rows(self.model, embeds, cfg.max_new_tokens + self.num_codebooks - 1,
                                      Sampling(cfg.temperature, cfg.top_k, cfg.top_p), generator)
        # a code cell holds BOC/EOC only where the model never learned otherwise: the codec reads 0..1023
        codes = np.clip(codes_of(generated, self.audio), 0, self.codebook_size - 1).T
        if codes.shape[1] == 0:
            return "", [], []
        with torch.no_grad():
            wave = self.audio_tokenizer.decode(torch.from_numpy(codes).unsqueeze(0).to(self.device))[0, 0]
        return "", [wave], [codes.astype(np.int16)]


# by the model config's model_type; a backend defined outside higgs_ds (models.backend_for) adds its own here
SYNTHESIZERS: dict[str, type[Synthesizer]] = {"higgs_audio_v2": NativeSynthesizer,
                                              "higgs_multimodal_qwen3": V3Synthesizer}


def synthesizer_for(model, tokenizer, audio_tokenizer) -> Synthesizer:
    """The synthesizer for MODEL's class, told apart by its config's model_type."""
    config = model.config
    model_type = config.get("model_type") if isinstance(config, dict) else getattr(config, "model_type", None)
    if model_type not in SYNTHESIZERS:
        raise SynthesisError(f"no synthesizer for a model of model_type {model_type!r} (known: "
                             f"{', '.join(SYNTHESIZERS)})")
    return SYNTHESIZERS[model_type](model, tokenizer, audio_tokenizer)


def write_wav(path: str | Path, audio: np.ndarray, sample_rate: int) -> None:
    import soundfile as sf

    from higgs_ds.files import atomic_write
    import io

    buf = io.BytesIO()
    sf.write(buf, np.clip(audio, -1.0, 1.0), sample_rate, format="WAV", subtype="PCM_16")
    atomic_write(path, buf.getvalue())


@dataclass
class ModelSource:
    """What to generate with: a model (base or merged), optionally a peft adapter, or a run's checkpoint (its
    base model, text tokenizer and adapter as the run recorded them)."""

    model: str | None = None  # directory or hub id[@revision]
    adapter: str | None = None  # a peft adapter directory (RUN/adapter, a checkpoint's adapter/)
    checkpoint: str | None = None  # a run directory (its latest), RUN/best, or a checkpoint step directory
    tokenizer: str | None = None  # text tokenizer (default: the model's, or the run's)
    backend: str | None = None  # models.backend_for: native or package.module:NAME (default: the run's, else native)

    def resolved(self) -> "ModelSource":
        from higgs_ds.checkpoints.saving import run_config_of, step_dir

        if self.checkpoint is None:
            if self.model is None:
                raise ValueError("name a model: --model DIR|ID (with --adapter DIR for an adapter), or "
                                 "--checkpoint RUN")
            return self
        if self.adapter is not None:
            raise ValueError("--checkpoint brings its own adapter; pass --adapter only with --model")
        ckpt = step_dir(self.checkpoint)
        run_model = run_config_of(ckpt)["model"]
        return ModelSource(model=self.model or run_model["path"], adapter=str(ckpt / "adapter"),
                           checkpoint=str(ckpt), tokenizer=self.tokenizer or run_model["tokenizer"],
                           backend=self.backend or run_model.get("backend") or "boson")  # none: an earlier version's


def load_model_for_generation(source: ModelSource, device: str, dtype: str = "auto"):
    """(model, text tokenizer, description). An adapter is applied in place (peft), so the model object itself
    generates with it; an adapter that does not fit the model is an error naming both."""
    import torch

    from higgs_ds.checkpoints.model import load_tokenizer
    from higgs_ds.config import ModelConfig
    from higgs_ds.models import model_backend

    source = source.resolved()
    torch_dtype = {"auto": "auto", "bf16": torch.bfloat16, "fp32": torch.float32}[dtype]
    mcfg = ModelConfig(path=source.model, tokenizer=source.tokenizer, backend=source.backend or "native")
    model = model_backend(mcfg).load(mcfg, torch_dtype)
    tokenizer = load_tokenizer(mcfg)
    if source.adapter is not None:
        apply_adapter(model, source.adapter, source.model)
    model.to(device).eval()
    return model, tokenizer, {"model": source.model, "adapter": source.adapter, "checkpoint": source.checkpoint,
                              "backend": source.backend or "native",
                              "dtype": str(next(model.parameters()).dtype).replace("torch.", "")}


def apply_adapter(model, adapter: str, model_name: str):
    from peft import PeftModel

    config = Path(adapter) / "adapter_config.json"
    if not config.is_file():
        raise FileNotFoundError(f"adapter {adapter}: no adapter_config.json (a peft adapter directory is expected)")
    try:
        PeftModel.from_pretrained(model, adapter)
    except (RuntimeError, ValueError, KeyError) as e:
        first = str(e).strip().splitlines()[0][:400]
        base = json.loads(config.read_text()).get("base_model_name_or_path")
        raise ValueError(f"adapter {adapter} (trained on {base}) does not fit the model {model_name}: {first}") \
            from None
    return model


def synthesize_prompts(synth: Synthesizer, prompts: list[Prompt], cfg: SynthesisConfig, out_dir: str | Path,
                       progress: bool = True, deadline: float | None = None,
                       wav_paths: dict[str, Path] | None = None) -> list[dict]:
    """Generate every prompt into OUT_DIR/ID.wav (or WAV_PATHS[id]); one row each, with `error` for a prompt that
    failed or was not reached before DEADLINE (time.time()), so no failure passes for an empty success."""
    from tqdm import tqdm

    out_dir = Path(out_dir)
    rows = []
    for prompt in tqdm(prompts, desc="synthesize", unit="prompt", disable=not progress, leave=False):
        row = prompt.describe()
        if deadline is not None and time.time() > deadline:
            row["error"] = "not generated: the time budget ran out first"
            rows.append(row)
            continue
        try:
            result = synth.generate(prompt, cfg)
        except SynthesisError as e:
            log.error(f"error: {e}")
            row["error"] = str(e)
            rows.append(row)
            continue
        wav = (wav_paths or {}).get(prompt.id, out_dir / f"{prompt.id}.wav")
        wav.parent.mkdir(parents=True, exist_ok=True)
        write_wav(wav, result.audio, result.sample_rate)
        codes = wav.with_suffix(".codes.npy")
        np.save(codes, result.codes, allow_pickle=False)
        row.update(wav=str(wav), codes=str(codes), seconds=round(result.seconds, 3), frames=result.frames,
                   generate_seconds=round(result.generate_seconds, 3),
                   real_time_factor=round(result.real_time_factor, 4), generated_text=result.text)
        rows.append(row)
    return rows


def summary(rows: list[dict]) -> dict:
    done = [r for r in rows if "error" not in r]
    audio = sum(r["seconds"] for r in done)
    compute = sum(r["generate_seconds"] for r in done)
    return {"prompts": len(rows), "generated": len(done), "failed": len(rows) - len(done),
            "audio_seconds": round(audio, 3), "generate_seconds": round(compute, 3),
            "real_time_factor": round(compute / audio, 4) if audio else None}
