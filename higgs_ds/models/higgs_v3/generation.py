"""Higgs TTS 3 generation: one delayed row of 8 codes a step from the tied audio head, with the delay pattern's
ramp forced (BOC in every codebook that has not started) and the wind-down after codebook 0 emits EOC (the other
codebooks finish their last codes), as sglang-omni and mlx-audio generate."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from higgs_ds.models.higgs_v3.inputs import undelay
from higgs_ds.models.higgs_v3.model import AudioConfig, HiggsTTS3


@dataclass
class Sampling:
    temperature: float = 0.0  # 0: greedy
    top_k: int | None = None
    top_p: float | None = None


class RowSampler:
    """Picks each row's codes from its (codebooks, codebook_size) logits and says when the clip is done. The first
    `codebooks` rows force BOC into codebooks after the row's index (and ignore codebook 0's EOC); once codebook 0
    says EOC, codebooks - 2 more rows finish the rest."""

    def __init__(self, audio: AudioConfig, sampling: Sampling, generator: torch.Generator | None = None):
        self.audio, self.sampling, self.generator = audio, sampling, generator
        self.rows = 0
        self.countdown: int | None = None
        self.done = False

    def pick(self, logits: torch.Tensor) -> torch.Tensor:
        s = self.sampling
        if s.temperature <= 1e-5 or s.top_k == 1:
            return logits.argmax(-1)
        logits = logits.float() / s.temperature
        if s.top_k and s.top_k < logits.shape[-1]:
            kth = logits.topk(s.top_k, dim=-1).values[..., -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        if s.top_p and 0 < s.top_p < 1:
            sorted_logits, order = logits.sort(-1, descending=True)
            cumulative = sorted_logits.softmax(-1).cumsum(-1)
            drop = cumulative - sorted_logits.softmax(-1) > s.top_p  # keep the smallest set reaching top_p
            logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
        return torch.multinomial(logits.softmax(-1), 1, generator=self.generator).squeeze(-1)

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        n = self.audio.num_codebooks
        codes = self.pick(logits)
        if self.rows < n:
            codes[self.rows + 1:] = self.audio.boc
        elif self.countdown is not None:
            self.countdown -= 1
            self.done = self.countdown <= 0
        elif int(codes[0]) == self.audio.eoc:
            self.countdown = n - 2
            self.done = n <= 2
        self.rows += 1
        return codes


@torch.no_grad()
def generate_rows(model: HiggsTTS3, prompt_embeds: torch.Tensor, max_rows: int, sampling: Sampling = Sampling(),
                  generator: torch.Generator | None = None) -> np.ndarray:
    """The delayed rows generated after PROMPT_EMBEDS ((1, P, hidden), ending at <|audio|>), at most MAX_ROWS."""
    from transformers import DynamicCache

    cache = DynamicCache(config=model.body.config)
    hidden = model.body(inputs_embeds=prompt_embeds, cache=cache, use_cache=True).last_hidden_state[:, -1]
    sampler = RowSampler(model.audio, sampling, generator)
    rows = []
    for _ in range(max_rows):
        codes = sampler(model.audio_logits(hidden)[0])
        rows.append(codes.cpu().numpy())
        if sampler.done:
            break
        step = model.embed_rows(codes)[None, None].to(prompt_embeds.dtype)
        hidden = model.body(inputs_embeds=step, cache=cache, use_cache=True).last_hidden_state[:, -1]
    return np.stack(rows)


def codes_of(rows: np.ndarray, audio: AudioConfig) -> np.ndarray:
    """Generated delayed rows -> (frames, codebooks) codes; none when fewer rows than codebooks came."""
    if len(rows) < audio.num_codebooks:
        return np.zeros((0, audio.num_codebooks), np.int64)
    return undelay(rows)
