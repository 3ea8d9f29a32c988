"""The listening evaluation during training: every `eval.synth_every` steps each rank generates its share of the
eval prompts with the weights being trained (ZeRO-2 keeps the full bf16 weights on every rank), writes
RUN/samples/stepN/ID.wav, scores them, and every rank learns the gathered scores (rank 0 logs them)."""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import json
import logging
import os
import threading
import time
from pathlib import Path

import numpy as np
import torch.distributed as dist

from higgs_ds.config import ConfigError, TrainConfig
from higgs_ds.listening.prompts import Prompt, prompts_from_shards, read_prompts
from higgs_ds.listening.scoring import Scorer, means, score_rows
from higgs_ds.listening.synthesis import SynthesisConfig, Synthesizer, synthesize_prompts, synthesizer_for, write_wav

log = logging.getLogger(__name__)


def eval_prompts(cfg: TrainConfig, warn: bool = True) -> list[Prompt]:
    """eval.prompts (bad lines are logged and left out), or eval.num_prompts drawn from data.val."""
    ev = cfg.eval
    if ev.prompts:
        prompts, rejects = read_prompts(ev.prompts)
        for r in rejects if warn else []:
            log.warning(f"eval.prompts: left out {r}")
        if not prompts:
            raise ConfigError(f"eval.prompts: {ev.prompts} holds no usable prompt ({len(rejects)} bad lines)")
        return prompts
    from higgs_ds.data.shard_index import ShardIndex

    return prompts_from_shards(ShardIndex.load(cfg.data.val), ev.num_prompts, ev.seed)


def shards_audio_tokenizer(cfg: TrainConfig) -> tuple[str, str | None]:
    """The audio tokenizer (and semantic model) the run's shards were built with, from build.json."""
    from higgs_ds.data.shard_index import ShardIndex

    root = cfg.data.val or cfg.data.train.split(",")[0].strip()
    settings = ShardIndex.load(root).meta["settings"]
    return settings["audio_tokenizer"], settings.get("semantic_model")


def check_listening(cfg: TrainConfig, num_codebooks: int) -> None:
    """Before any process group: the prompts read, the audio tokenizer and the scoring models resolve, and the
    audio tokenizer makes the codes the model reads."""
    from higgs_ds.checkpoints.hub import resolve

    ev = cfg.eval
    if not ev.synth_every:
        return
    eval_prompts(cfg, warn=False)
    spec = ev.audio_tokenizer or shards_audio_tokenizer(cfg)[0]
    audio_tokenizer = json.loads((resolve(spec, "audio_tokenizer").path / "config.json").read_text())
    if audio_tokenizer["n_q"] != num_codebooks:
        raise ConfigError(f"eval.audio_tokenizer: {spec} makes {audio_tokenizer['n_q']} codebooks a frame, the model "
                          f"reads {num_codebooks}")
    for kind, name in (("asr_model", ev.asr_model), ("speaker_model", ev.speaker_model)):
        if name:
            resolve(name, kind)


@contextlib.contextmanager
def training_rng_kept():
    """Whatever runs inside (building models, sampling) leaves the RNG state training continues from untouched, so
    a run with listening evaluations trains exactly like one without."""
    import random

    import torch

    py_state, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=range(torch.cuda.device_count())):
        yield
    random.setstate(py_state)
    np.random.set_state(np_state)


def listening_modules(ev) -> list[str]:
    """What the listening evaluation imports when it loads, for the scorers EV asks for: about 3 s of imports on a
    CPU core (the audio tokenizer's codec pulls in torch._dynamo; librosa, which both default scorers use, pulls
    in scipy.signal and numba's cache)."""
    modules = ["boson_multimodal.audio_processing.higgs_audio_tokenizer", "librosa.core.audio",
               "librosa.feature.spectral"]
    if ev.speaker_model is None:
        modules.append("resemblyzer")
    if ev.dnsmos:
        modules += ["onnxruntime", "speechmos.dnsmos"]
    return modules


def import_in_background(modules: list[str]) -> threading.Thread:
    """Import MODULES on a thread, so the first evaluation finds them loaded. Importing draws no random numbers, so
    training is unchanged; an import that fails here is left for the evaluation to raise. A fork in this process
    (a loader worker) waits for the thread first: a child forked mid-import would inherit that module's import
    lock held by a thread it does not have, and hang if it imported the module. Start it where the training
    thread imports nothing more (after a step): two threads importing modules that import each other can stop
    one of them with a deadlock error."""
    def run() -> None:
        for name in modules:
            try:
                importlib.import_module(name)
            except Exception:  # raised again, with its message, where the evaluation imports it
                pass

    thread = threading.Thread(target=run, name="higgs-ds-listening-imports", daemon=True)

    def before_fork() -> None:
        if threading.current_thread() is not thread:
            thread.join()

    os.register_at_fork(before=before_fork)
    thread.start()
    return thread


class ListeningEval:
    """The prompts are read at start; the audio tokenizer, the scoring models, the prompts' audio and the ground
    truth's scores load at the first evaluation, once per process, and only on ranks that have prompts (with fewer
    prompts than ranks, the rest never load them); those ranks import the modules for it on a thread once training
    runs (import_ahead). The load time is reported as load_seconds, apart from the evaluation's own clock."""

    def __init__(self, cfg: TrainConfig, model, tokenizer, rank: int, world: int, device):
        ev = cfg.eval
        self.cfg, self.rank, self.world = cfg, rank, world
        self._model, self._tokenizer, self._device = model, tokenizer, device
        self.samples = Path(cfg.run_dir) / "samples"
        self.prompts = eval_prompts(cfg)
        self.mine = self.prompts[rank::world]
        self.settings = SynthesisConfig(max_new_tokens=ev.max_new_tokens, temperature=ev.temperature,
                                        top_p=ev.top_p, top_k=ev.top_k, seed=ev.seed)
        self.synth: Synthesizer | None = None
        self.scorer: Scorer | None = None
        self.truth: dict[str, dict] = {}
        self.loaded = False
        self._imports: threading.Thread | None = None

    def import_ahead(self) -> None:
        """On a rank with prompts, start importing what the first evaluation loads (once; the train loop calls it
        after each step, when the step's own first-use imports are done)."""
        if self.mine and self._imports is None and not self.loaded:
            self._imports = import_in_background(listening_modules(self.cfg.eval))

    def _load(self) -> None:
        from higgs_ds.data.codec import load_audio_tokenizer

        if self._imports is not None:  # what it could not import fails below, imported again, with its error
            self._imports.join()
        ev = self.cfg.eval
        spec, semantic = shards_audio_tokenizer(self.cfg) if ev.audio_tokenizer is None else (ev.audio_tokenizer,
                                                                                              None)
        audio_tokenizer = load_audio_tokenizer(spec, str(self._device), ev.semantic_model or semantic)
        self.synth = synthesizer_for(self._model, self._tokenizer, audio_tokenizer)
        self.scorer = Scorer(ev.asr_model, ev.speaker_model, str(self._device), naturalness=ev.dnsmos)
        self._write_prompt_audio()
        self.truth = self._score_ground_truth()

    def _load_once(self) -> float:
        """Load on the first evaluation (ranks without prompts load nothing); a rank that fails to load stops every
        rank with its error, not the others waiting in the next collective. Seconds this rank spent loading."""
        if self.loaded:
            return 0.0
        t0, error = time.time(), None
        if self.mine:
            try:
                self._load()
            except Exception as e:  # whatever it is, the other ranks must hear of it
                error = f"rank {self.rank}: {type(e).__name__}: {e}"
        seconds = time.time() - t0
        gathered: list = [None] * self.world
        dist.all_gather_object(gathered, error)
        if any(gathered):
            raise RuntimeError(f"the listening evaluation could not load: {'; '.join(g for g in gathered if g)}")
        self.loaded = True
        return seconds

    def _write_prompt_audio(self) -> None:
        """RUN/samples/prompts/ID.ref.wav and ID.truth.wav for this rank's prompts: copies of their files, or the
        stored codes decoded. Scoring and the report use these; the model is fed the codes themselves."""
        out = self.samples / "prompts"
        out.mkdir(parents=True, exist_ok=True)
        self.ref_wavs = {}
        for p in self.mine:
            ref = p.refs[0]
            self.ref_wavs[p.id] = out / f"{p.id}.ref.wav"
            self._materialise(ref.audio, ref.codes, self.ref_wavs[p.id])
            ref.audio = ref.audio or str(self.ref_wavs[p.id])
            if p.target_audio or p.target_codes is not None:
                truth = out / f"{p.id}.truth.wav"
                self._materialise(p.target_audio, p.target_codes, truth)
                p.target_audio = str(truth)

    def _score_ground_truth(self) -> dict[str, dict]:
        """The ceiling, once: each prompt's ground truth scored as a generated clip would be."""
        from higgs_ds.listening.scoring import Clip

        truth = {}
        for p in self.mine:
            if p.target_audio:
                clip = Clip.load(p.target_audio)
                truth[p.id] = self.scorer.score(clip, Clip.load(p.refs[0].audio), p.text, clip, p.language)
        return truth

    def _materialise(self, path: str | None, codes, dest: Path) -> None:
        if path is not None:
            from higgs_ds.audio import read_audio

            write_wav(dest, *read_audio(path))  # as wav whatever it was, so every browser plays it
            return
        import torch

        wav = self.synth.audio_tokenizer.decode(torch.as_tensor(np.asarray(codes), dtype=torch.long).unsqueeze(0))
        write_wav(dest, wav[0, 0], self.synth.sample_rate)

    def run(self, step: int) -> tuple[dict, list[dict]]:
        """Generate and score this rank's prompts (bounded by eval.max_seconds); every rank returns the means over
        all prompts and all prompts' rows."""
        with training_rng_kept():
            return self._run(step)

    def _run(self, step: int) -> tuple[dict, list[dict]]:
        loaded_now = not self.loaded and bool(self.mine)
        load_seconds = self._load_once()
        t0 = time.time()
        out = self.samples / f"step{step:08d}"
        rows = synthesize_prompts(self.synth, self.mine, self.settings, out, progress=False,
                                  deadline=t0 + self.cfg.eval.max_seconds)
        t1 = time.time()
        scored = score_rows(self.scorer, rows, ground_truth=False)["prompts"] if rows else []
        for row, s in zip(rows, scored):
            s.update(ref_wav=str(self.ref_wavs[row["id"]]), source=row["source"],
                     generate_seconds=row.get("generate_seconds"), frames=row.get("frames"))
            if row["id"] in self.truth:
                s["ground_truth"] = self.truth[row["id"]]
        gathered: list = [None] * self.world
        dist.all_gather_object(gathered, {"rows": scored, "generate": t1 - t0, "score": time.time() - t1,
                                          "load": load_seconds, "loaded_now": loaded_now,
                                          "scorer": self.scorer and self.scorer.describe()})
        everything = sorted((r for g in gathered for r in g["rows"]), key=lambda r: r["id"])
        ok = [r for r in everything if "error" not in r]
        result = {k: v for k, v in means([r["generated"] for r in ok]).items() if not k.endswith("_n")}
        result.update(prompts=len(everything), failed=len(everything) - len(ok),
                      synth_seconds=max(g["generate"] + g["score"] for g in gathered),
                      generate_seconds=max(g["generate"] for g in gathered),
                      score_seconds=max(g["score"] for g in gathered),
                      load_seconds=max(g["load"] for g in gathered),
                      loaded_on_ranks=[r for r, g in enumerate(gathered) if g["loaded_now"]])
        if self.rank == 0:
            truth = {k: v for k, v in means([r["ground_truth"] for r in ok if "ground_truth" in r]).items()
                     if not k.endswith("_n")}
            out.mkdir(parents=True, exist_ok=True)
            (out / "scores.json").write_text(json.dumps({"step": step, "mean": result, "ground_truth_mean": truth,
                                                         "prompts": everything, "scorer": gathered[0]["scorer"],
                                                         "sampling": self.sampling()}, indent=1))
        return result, everything

    def sampling(self) -> dict:
        """How the samples were generated: the settings and the decoding loop (which settings apply is its own)."""
        return {**dataclasses.asdict(self.settings), "generator": self.synth.generator if self.synth else None}

