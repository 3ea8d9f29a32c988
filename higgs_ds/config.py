"""Training configuration: dataclasses as the schema, YAML + dotted `key=value` overrides, one validate()."""

from __future__ import annotations

import dataclasses
import difflib
import functools
import json
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from higgs_ds.files import is_url


SELECT_METRICS = ("loss", "similarity", "wer", "mix")


class ConfigError(ValueError):
    """A config key or value is wrong; the message names the key."""


@dataclass
class ModelConfig:
    path: str = "bosonai/higgs-audio-v2-generation-3B-base"  # local dir or hub id[@revision] (hub.py pins the default)
    tokenizer: str | None = None  # defaults to `path`
    activation_checkpointing: bool = False
    # native: transformers' own HiggsAudioV2ForConditionalGeneration, heads only where labels are; or
    # package.module:NAME, a ModelBackend defined outside higgs_ds (the tests' boson_multimodal oracle)
    backend: str = "native"
    # written by the run, not read: the layout `path` is in, "native" or "boson" (the native backend trains a
    # boson-layout checkpoint through its native copy in the cache, hub.py)
    layout: str | None = None


@dataclass
class LoraConfig:
    # "default": the model family's first preset (Higgs-Audio v2: attention_audio_ffn; Higgs TTS 3: attention_mlp);
    # a preset of the family by name (models/<family>/model.py LORA_PRESETS), or "custom" (use `targets`)
    preset: str = "default"
    targets: list[str] = field(default_factory=list)  # module-name suffixes, e.g. self_attn.q_proj
    rank: int = 16
    alpha: float = 32.0
    dropout: float = 0.05
    modules_to_save: list[str] = field(default_factory=list)  # trained in full, e.g. audio_codebook_embeddings


@dataclass
class DataConfig:
    train: str = ""  # shard directory (holds index.json); several, comma-separated, are mixed
    train_weights: list[float] = field(default_factory=list)  # their shares of each epoch (empty: by size)
    val: str | None = None  # shard directory for evaluation; None = no eval
    micro_batch_size: int = 2
    num_workers: int = 2
    seed: int = 0
    token_budget: int = 0  # > 0: batches of similar length under this many padded tokens; 0: micro_batch_size samples
    max_batch_size: int = 64  # cap on samples per batch with token_budget
    sort_window: int = 2000  # samples sorted by length together with token_budget
    speaker_cap: int = 0  # at most this many samples per speaker per epoch (0 = no cap)
    speaker_temperature: float = 1.0  # t < 1 subsamples speakers to counts ~ n_s ** t (1 = as is)
    max_skipped_samples: int = 100  # unreadable samples the run skips (logged, counted over all ranks) before it stops


@dataclass
class OptimConfig:
    lr: float = 1e-4
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    warmup_steps: int = 100
    schedule: str = "cosine"  # cosine | linear | constant (after warmup)
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0


@dataclass
class LossConfig:
    text_weight: float = 1.0
    audio_weight: float = 1.0


@dataclass
class EvalConfig:
    """Listening evaluation (speech generated with the weights being trained, scored) and the best checkpoint."""

    prompts: str | None = None  # JSONL of held-out prompts: ref_audio, ref_text, text [, id, target_audio, language]
    num_prompts: int = 4  # without `prompts`: this many drawn from data.val (references fed as stored codes)
    synth_every: int = 0  # generate and score every prompt every N steps and at the end (0: never)
    max_seconds: float = 600.0  # wall-clock bound of one listening evaluation; prompts not reached are reported
    max_new_tokens: int = 750  # per prompt: audio frames (25 a second) + text tokens
    temperature: float = 0.7
    top_p: float = 0.95
    top_k: int | None = None
    seed: int = 0
    audio_tokenizer: str | None = None  # default: the one data.val (else data.train) was built with (build.json)
    semantic_model: str | None = None
    asr_model: str | None = None  # Whisper (or any transformers ASR model) dir or hub id; none: WER not measured
    speaker_model: str | None = None  # x-vector model dir or hub id; none: resemblyzer (ships in its wheel)
    dnsmos: bool = True
    select: str = "loss"  # which evaluation keeps RUN/best: loss | similarity | wer | mix
    select_weights: dict[str, float] = field(default_factory=lambda: {"loss": 1.0, "similarity": 1.0, "wer": 1.0})
    patience: int = 0  # stop after this many evaluations without a better `select` score (0: never)


@dataclass
class TrainConfig:
    run_dir: str = "runs/default"
    steps: int = 1000
    grad_accum: int = 1
    precision: str = "bf16"  # bf16 | fp32
    seed: int = 0
    log_every: int = 10
    eval_every: int = 0  # 0 = only at the end (when data.val is set)
    eval_batches: int = 0  # 0 = the whole validation set
    save_every: int = 500
    keep_last: int = 3
    resume: str = "auto"  # auto | never | PATH to a checkpoint step dir
    max_skipped_steps: int = 20  # non-finite steps (skipped on every rank) before stopping with an error
    # consecutive steps with a gradient norm of exactly 0 (while they had labels), or with the loss at a uniform
    # guess's entropy after it had been lower, that stop the run as diverged (0: only a non-finite update stops it)
    diverged_steps: int = 3
    progress_bar: bool = True  # on a terminal; plain lines otherwise
    # on CUDA, refuse before the first step a largest micro-batch the memory model says will not fit the GPU
    memory_check: bool = True
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def validate(self, need_data: bool = True) -> "TrainConfig":
        """NEED_DATA: data.train must name shard sets (planning memory needs none)."""
        for check in (_check_run, _check_data, _check_training, _check_eval, _check_model):
            check(self, need_data) if check in (_check_data, _check_eval) else check(self)
        return self


def need(ok: bool, key: str, msg: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {msg}")


def _check_run(cfg: "TrainConfig") -> None:
    """Steps, precision, logging, saving and resuming."""
    need(cfg.steps > 0, "steps", f"must be > 0, got {cfg.steps}")
    need(cfg.grad_accum >= 1, "grad_accum", f"must be >= 1, got {cfg.grad_accum}")
    need(cfg.precision in ("bf16", "fp32"), "precision", f"must be bf16 or fp32, got {cfg.precision!r}")
    need(cfg.log_every >= 1, "log_every", "must be >= 1")
    need(cfg.save_every >= 0, "save_every", "must be >= 0 (0 = only at the end)")
    need(cfg.keep_last >= 1, "keep_last", "must be >= 1")
    need(cfg.diverged_steps >= 0, "diverged_steps", f"must be >= 0 (0 = off), got {cfg.diverged_steps}")
    need(cfg.resume in ("auto", "never") or Path(cfg.resume).is_dir(), "resume",
         f"must be auto, never or an existing checkpoint directory, got {cfg.resume!r}")


def _check_data(cfg: "TrainConfig", need_data: bool = True) -> None:
    """data.*: batching, speakers, and shard sets that exist."""
    need(cfg.data.micro_batch_size >= 1, "data.micro_batch_size", f"must be >= 1, got {cfg.data.micro_batch_size}")
    need(cfg.data.num_workers >= 0, "data.num_workers", "must be >= 0")
    need(cfg.data.token_budget >= 0, "data.token_budget", "must be >= 0 (0 = fixed micro_batch_size)")
    need(cfg.data.max_batch_size >= 1 and cfg.data.sort_window >= 1, "data.max_batch_size",
         "max_batch_size and sort_window must be >= 1")
    need(cfg.data.speaker_cap >= 0, "data.speaker_cap", "must be >= 0")
    need(0 < cfg.data.speaker_temperature <= 1, "data.speaker_temperature", "must be in (0, 1]")
    need(cfg.data.max_skipped_samples >= 0, "data.max_skipped_samples", "must be >= 0")
    need(bool(cfg.data.train) or not need_data, "data.train",
         "is required (a shard directory built by `higgs-ds shards build`)")
    train_sets = [p.strip() for p in cfg.data.train.split(",") if p.strip()]
    need(not cfg.data.train_weights or len(cfg.data.train_weights) == len(train_sets), "data.train_weights",
         f"has {len(cfg.data.train_weights)} weights for {len(train_sets)} shard set(s) in data.train")
    need(all(w >= 0 for w in cfg.data.train_weights) and (not cfg.data.train_weights or
                                                          sum(cfg.data.train_weights) > 0),
         "data.train_weights", "must be >= 0 with a positive sum")
    for key, path in [("data.train", p) for p in train_sets] + [("data.val", cfg.data.val)]:
        if path and not is_url(path):
            need((Path(path) / "index.json").is_file(), key, f"{path} has no index.json (not a finished shard set)")


def _check_training(cfg: "TrainConfig") -> None:
    """optim.*, loss.* and lora.*."""
    need(cfg.optim.lr > 0, "optim.lr", f"must be > 0, got {cfg.optim.lr}")
    need(cfg.optim.weight_decay >= 0, "optim.weight_decay", "must be >= 0")
    need(cfg.optim.warmup_steps >= 0, "optim.warmup_steps", "must be >= 0")
    need(cfg.model.backend == "native" or ":" in cfg.model.backend, "model.backend",
         f"must be native (or package.module:NAME, a backend defined outside higgs_ds), got {cfg.model.backend!r}"
         + ("; boson_multimodal's model is no longer a backend: `higgs-ds convert-run RUN` converts a run trained on "
            "it" if cfg.model.backend == "boson" else ""))
    need(cfg.optim.schedule in ("cosine", "linear", "constant"), "optim.schedule",
         f"must be cosine, linear or constant, got {cfg.optim.schedule!r}")
    need(0 <= cfg.optim.min_lr_ratio <= 1, "optim.min_lr_ratio", "must be in [0, 1]")
    need(cfg.optim.grad_clip >= 0, "optim.grad_clip", "must be >= 0 (0 = no clipping)")
    need(all(0 <= b < 1 for b in cfg.optim.betas), "optim.betas", "must be in [0, 1)")
    need(cfg.loss.text_weight >= 0 and cfg.loss.audio_weight >= 0, "loss", "weights must be >= 0")
    need(cfg.loss.text_weight + cfg.loss.audio_weight > 0, "loss", "text_weight + audio_weight must be > 0")
    need(bool(cfg.lora.preset), "lora.preset", "must name a preset of the model family, default or custom")
    need(cfg.lora.preset != "custom" or bool(cfg.lora.targets), "lora.targets", "preset custom needs targets")
    need(cfg.lora.rank >= 1, "lora.rank", f"must be >= 1, got {cfg.lora.rank}")
    need(cfg.lora.alpha > 0, "lora.alpha", "must be > 0")
    need(0 <= cfg.lora.dropout < 1, "lora.dropout", "must be in [0, 1)")


def _check_eval(cfg: "TrainConfig", need_data: bool = True) -> None:
    """eval.*: listening, and what choosing the best checkpoint needs."""
    ev = cfg.eval
    need(ev.synth_every >= 0, "eval.synth_every", "must be >= 0 (0 = never)")
    need(ev.num_prompts >= 1, "eval.num_prompts", "must be >= 1")
    need(ev.max_seconds > 0, "eval.max_seconds", "must be > 0")
    need(ev.max_new_tokens >= 1, "eval.max_new_tokens", "must be >= 1")
    need(ev.temperature >= 0 and 0 < ev.top_p <= 1, "eval.temperature", "temperature >= 0 and top_p in (0, 1]")
    need(ev.prompts is None or Path(ev.prompts).is_file(), "eval.prompts", f"{ev.prompts} does not exist")
    need(not (ev.synth_every and need_data) or bool(ev.prompts or cfg.data.val), "eval.synth_every",
         "needs eval.prompts or data.val (where prompts are drawn from)")
    need(ev.select in SELECT_METRICS, "eval.select", f"must be one of {', '.join(SELECT_METRICS)}, got "
                                                      f"{ev.select!r}")
    unknown = sorted(set(ev.select_weights) - {"loss", "similarity", "wer"})
    need(not unknown, "eval.select_weights", f"keys must be loss, similarity, wer; got {unknown}")
    uses = {"loss": ["loss"], "similarity": ["similarity"], "wer": ["wer"],
            "mix": [k for k, w in ev.select_weights.items() if w]}[ev.select]
    # the default (loss) without data.val just keeps no best checkpoint; asking for more than that needs data.val
    need("loss" not in uses or bool(cfg.data.val) or (ev.select == "loss" and not ev.patience), "eval.select",
         f"{ev.select} needs data.val (eval loss)")
    need(uses == ["loss"] or bool(ev.synth_every), "eval.select",
         f"{ev.select} needs listening evaluations: set eval.synth_every")
    need("wer" not in uses or bool(ev.asr_model), "eval.select", f"{ev.select} needs WER: set eval.asr_model")
    need(ev.patience >= 0, "eval.patience", "must be >= 0 (0 = never stop early)")


def _check_model(cfg: "TrainConfig") -> None:
    """model.path: a local directory holds config.json (a hub id is checked when resolved)."""
    local = cfg.model.path.startswith((".", "/")) or os.path.exists(cfg.model.path)
    need(not local or (Path(cfg.model.path) / "config.json").is_file(), "model.path",
         f"{cfg.model.path} has no config.json")


def _field_types(cls) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _unknown(key: str, valid: list[str]) -> ConfigError:
    close = difflib.get_close_matches(key.split(".")[-1], valid, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else f"; valid keys: {', '.join(valid)}"
    return ConfigError(f"unknown config key {key!r}{hint}")


def _check_keys(tree: dict, cls, prefix: str = "") -> None:
    """Every key of TREE names a field of CLS, and sections hold mappings; the error names the key and the closest
    valid one. (OmegaConf checks the values' types when the layers merge.)"""
    field_types = _field_types(cls)
    for key, value in tree.items():
        if key not in field_types:
            raise _unknown(prefix + str(key), list(field_types))
        typ = field_types[key]
        section = dataclasses.is_dataclass(typ)
        if section and not isinstance(value, dict):
            raise ConfigError(f"{prefix}{key}: must be a mapping, got {value!r}")
        if isinstance(value, dict) and not section and typing.get_origin(typ) is not dict:
            raise ConfigError(f"{prefix}{key} is not a section")
        items = typing.get_args(typ)
        if typing.get_origin(typ) is tuple and Ellipsis not in items and isinstance(value, list) and \
                len(value) != len(items):
            raise ConfigError(f"{prefix}{key}: must have {len(items)} items, got {len(value)}")
        if section:
            _check_keys(value, typ, f"{prefix}{key}.")


def _field_type(dotted: str) -> Any:
    typ: Any = TrainConfig
    for part in dotted.split("."):
        typ = _field_types(typ)[part]
    return typ


def _override(item: str) -> dict:
    """`a.b=value` as a nested mapping. Values are YAML, except that a string field keeps its text verbatim ("007"
    stays "007") and an optional one takes none/null as None."""
    key, sep, value = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"override {item!r} must look like key=value (e.g. optim.lr=3e-4)")
    parsed: Any = yaml.safe_load(value) if value.strip() else value
    parts, typ = key.split("."), TrainConfig
    for i, part in enumerate(parts):
        if not dataclasses.is_dataclass(typ):
            raise ConfigError(f"{'.'.join(parts[:i])} is not a section")
        field_types = _field_types(typ)
        if part not in field_types:
            raise _unknown(".".join(parts[:i + 1]), list(field_types))
        typ = field_types[part]
    optional = type(None) in typing.get_args(typ)
    if optional and value.strip().lower() in ("none", "null"):
        parsed = None
    elif typ is str or (optional and str in typing.get_args(typ)):
        parsed = value
    elif typing.get_origin(typ) in (list, tuple) and isinstance(parsed, str):
        parsed = [v.strip() for v in value.split(",") if v.strip()]  # a,b,c as well as [a, b, c]
    return functools.reduce(lambda inner, k: {k: inner}, reversed(parts), parsed)


_TYPE_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


def _value_error(e: OmegaConfBaseException) -> ConfigError:
    key = getattr(e, "full_key", "") or ""
    try:
        typ = _field_type(key)
    except (KeyError, TypeError):
        return ConfigError(f"{key or 'config'}: {str(e).splitlines()[0]}")
    if dataclasses.is_dataclass(typ):
        return ConfigError(f"{key}: must be a mapping")
    base = typ
    if typing.get_origin(typ) in (typing.Union, types.UnionType):  # Optional[X]: the X
        base = next(a for a in typing.get_args(typ) if a is not type(None))
    origin = typing.get_origin(base)
    wanted = "a list" if origin in (list, tuple) else _TYPE_NAMES.get(base, getattr(base, "__name__", str(base)))
    return ConfigError(f"{key}: must be {wanted}, got {getattr(e, 'value', None)!r}")


def load_config(path: str | None = None, overrides: list[str] | None = None, need_data: bool = True) -> TrainConfig:
    """defaults <- YAML file <- `key=value` overrides, merged by OmegaConf over the dataclasses, then validate()."""
    layers = []
    if path:
        if not Path(path).is_file():
            raise ConfigError(f"config file {path} does not exist")
        with open(path) as f:
            try:
                tree = yaml.safe_load(f) or {}
            except yaml.YAMLError as e:
                raise ConfigError(f"{path}: not valid YAML: {e}") from None
        if not isinstance(tree, dict):
            raise ConfigError(f"{path}: must hold a mapping of config keys")
        _check_keys(tree, TrainConfig)
        layers.append(tree)
    for item in overrides or []:
        tree = _override(item)
        _check_keys(tree, TrainConfig)
        layers.append(tree)
    try:
        merged = OmegaConf.merge(OmegaConf.structured(TrainConfig), *(OmegaConf.create(t) for t in layers))
        cfg = OmegaConf.to_object(merged)
    except OmegaConfBaseException as e:
        raise _value_error(e) from None
    return cfg.validate(need_data)


def to_dict(cfg: TrainConfig) -> dict:
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def dump_config(cfg: TrainConfig, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
