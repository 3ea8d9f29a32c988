"""Evaluations at a step: teacher-forced losses and per-codebook accuracy on data.val, and the listening
evaluation (speech generated with the current weights, scored); both logged, every sample counted once across the
ranks."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from higgs_ds.config import TrainConfig
from higgs_ds.data.loader import BatchReader
from higgs_ds.data.plan import plan_eval
from higgs_ds.distributed import all_reduce_sum
from higgs_ds.listening.listen_eval import ListeningEval
from higgs_ds.listening.report import write_report
from higgs_ds.models.backend import ModelBackend, codebook_hits
from higgs_ds.training.metrics import Metrics
from higgs_ds.training.stats import StepStats

log = logging.getLogger(__name__)
TOP_K = (1, 5)  # teacher-forced audio accuracy: the target among the k most likely codes


def evaluate(engine, backend: ModelBackend, reader: BatchReader, cfg: TrainConfig, rank: int, world: int,
             device) -> dict:
    """Teacher-forced losses over the validation set, every sample counted once across the ranks."""
    engine.eval()
    ncb = backend.num_codebooks(engine.module.config)
    stats = StepStats(ncb, device)
    hits = torch.zeros(len(TOP_K), ncb, dtype=torch.long)
    plan = plan_eval(len(reader.index), rank, world, cfg.data.micro_batch_size)
    if cfg.eval_batches:
        plan = plan[:cfg.eval_batches]
    with torch.no_grad():
        for rows, weight in plan:
            batch = reader.collate(rows)
            out = backend.heads(engine, backend.to_device(batch, device))
            if weight:  # a repeated batch that only keeps this rank in step with the others
                stats.add(out.sums, backend.sizes(batch), reader.frame_rate)
                if out.sums.codebook_tokens.numel():
                    hits += codebook_hits(out, TOP_K)
    engine.train()
    total = stats.all_reduced()
    hits = np.asarray(all_reduce_sum(hits.flatten().tolist(), device)).reshape(len(TOP_K), ncb)
    tokens = np.maximum(total.codebook_tokens, 1)
    accuracy = {}
    for k, row in zip(TOP_K, hits):
        accuracy[f"audio_top{k}"] = float(row.sum() / tokens.sum())
        accuracy.update({f"audio_top{k}_cb{i}": float(h / t) for i, (h, t) in enumerate(zip(row, tokens))})
    return {"loss": cfg.loss.text_weight * total.text_loss + cfg.loss.audio_weight * total.audio_loss,
            "text_loss": total.text_loss, "audio_loss": total.audio_loss, "text_tokens": int(total.text_tokens),
            "audio_tokens": int(total.audio_tokens), **accuracy, **total.codebook_losses()}


@dataclass
class Evaluators:
    val: BatchReader | None  # teacher-forced losses and accuracy on data.val
    listening: ListeningEval | None  # speech generated with the current weights, scored

    def due(self, cfg: TrainConfig, step: int) -> tuple[bool, bool]:
        teacher = self.val is not None and bool(cfg.eval_every) and step % cfg.eval_every == 0
        listen = self.listening is not None and step % cfg.eval.synth_every == 0
        return teacher, listen


def log_eval(engine, backend: ModelBackend, reader: BatchReader, cfg: TrainConfig, step: int, de, device,
             metrics: Metrics) -> dict:
    ev = evaluate(engine, backend, reader, cfg, de.rank, de.world, device)
    metrics.log({"step": step, "split": "eval", **ev})
    log.info(f"eval at step {step}: loss {ev['loss']:.4f} text {ev['text_loss']:.4f} audio {ev['audio_loss']:.4f} "
             f"audio top-1 {ev['audio_top1']:.3f} top-5 {ev['audio_top5']:.3f}")
    return ev


def log_listening(listening: ListeningEval, cfg: TrainConfig, step: int, de, metrics: Metrics) -> dict:
    result, rows = listening.run(step)
    if de.is_main:
        metrics.log({"step": step, "split": "listen", **result})
        metrics.log_samples(step, rows)
        write_report(Path(cfg.run_dir))

    def fmt(key: str) -> str:
        return "-" if result.get(key) is None else f"{result[key]:.3f}"

    log.info(f"listening at step {step}: similarity {fmt('similarity')} wer {fmt('wer')} dnsmos {fmt('dnsmos')}; "
             f"{result['prompts'] - result['failed']} of {result['prompts']} prompts generated in "
             f"{result['synth_seconds']:.1f} s (samples in {Path(cfg.run_dir) / 'samples' / f'step{step:08d}'})")
    return result
