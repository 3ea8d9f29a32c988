"""Checks before any process group exists: the shard sets and the text tokenizer were made for this model (its
family, codebooks, vocabulary), and on a GPU the largest micro-batch fits the card."""

from __future__ import annotations

import json

import torch

from higgs_ds.checkpoints.hub import locate
from higgs_ds.checkpoints.model import load_tokenizer
from higgs_ds.config import ConfigError, TrainConfig
from higgs_ds.data.prompt_formats import CHATML, TTS3, prompt_format
from higgs_ds.data.shard_index import ShardIndex
from higgs_ds.listening.listen_eval import check_listening


def check_model_fits_data(cfg: TrainConfig) -> None:
    """The shard sets and the text tokenizer were made for this model (codebooks per frame, codebook size, text
    vocabulary). Checked on config files before any process group exists: a mismatch is one message here, not a
    shape error or a device-side assert inside the model."""
    checkpoint, layout = locate(cfg.model.path, "model")
    model_config = json.loads((checkpoint.path / "config.json").read_text())
    family = "Higgs TTS 3" if layout == "tts3" else "Higgs-Audio v2"
    if layout == "tts3":  # its codebook size counts BOC and EOC
        from higgs_ds.models.higgs_v3.model import AudioConfig

        audio = AudioConfig.from_config(model_config)
        codebooks, codebook_size = audio.num_codebooks, audio.codebook_size - 2
        vocab = model_config["text_config"]["vocab_size"]
    elif layout == "native":  # its codebook_size counts the stream bos and eos
        codebooks, codebook_size = model_config["num_codebooks"], model_config["codebook_size"] - 2
        vocab = model_config["vocab_size"]
    else:
        codebooks, codebook_size = model_config["audio_num_codebooks"], model_config["audio_codebook_size"]
        vocab = model_config["text_config"]["vocab_size"]
    sets = [("data.train", p.strip()) for p in cfg.data.train.split(",") if p.strip()]
    tokenizer = load_tokenizer(cfg.model)
    wanted = prompt_format(tokenizer)
    if (wanted == TTS3) != (layout == "tts3"):
        raise ConfigError(f"model.tokenizer: {cfg.model.tokenizer or cfg.model.path} is "
                          f"{'a Higgs TTS 3' if wanted == TTS3 else 'not a Higgs TTS 3'} text tokenizer (the v3 "
                          f"prompt's tokens), but the model {cfg.model.path} is {family}; use the model's own tokenizer")
    for key, root in sets + ([("data.val", cfg.data.val)] if cfg.data.val else []):
        built = ShardIndex.load(root).meta["settings"]
        made_for = built.get("prompt_format", CHATML)
        if made_for != wanted:
            raise ConfigError(f"{key}: {root} was built for {'Higgs TTS 3' if made_for == TTS3 else 'Higgs-Audio v2'} "
                              f"(build.json prompt_format {made_for!r}), but the model {cfg.model.path} is {family}; "
                              f"build the shards with --text-tokenizer set to this model's tokenizer")
        if built["num_codebooks"] != codebooks:
            raise ConfigError(f"{key}: {root} holds {built['num_codebooks']} codebooks a frame (its build.json), but "
                              f"the model {cfg.model.path} reads {codebooks} (audio_num_codebooks); build the "
                              f"shards with the audio tokenizer that belongs to this model")
        if built.get("codebook_size", 1024) > codebook_size:
            raise ConfigError(f"{key}: {root} holds codes up to {built.get('codebook_size', 1024) - 1} (build.json "
                              f"codebook_size), but the model {cfg.model.path} has audio_codebook_size "
                              f"{codebook_size}")
    check_listening(cfg, codebooks)
    tokens = len(tokenizer)
    if tokens > vocab:
        raise ConfigError(f"model.tokenizer: {cfg.model.tokenizer or cfg.model.path} has {tokens} tokens, more than "
                          f"the {vocab} of the model's text vocabulary ({cfg.model.path}); use the model's own "
                          f"tokenizer")


def check_step_fits_gpu(cfg: TrainConfig, ds_config_path: str, de) -> None:
    """On CUDA with bf16 (what the memory model describes), the run's largest micro-batch fits this GPU: else a
    ConfigError naming what fits, on every rank alike, before any process group exists."""
    if not (cfg.memory_check and torch.cuda.is_available() and cfg.precision == "bf16"):
        return
    from higgs_ds.training.memory_plan import check_fits, model_shape

    card = torch.cuda.get_device_properties(de.local_rank % torch.cuda.device_count()).total_memory
    check_fits(cfg, model_shape(cfg, ds_config_path), card, de.world)
