"""Seeded random weights for a model built without its init, for both families' fixtures and benchmarks: matrices
uniform with the standard deviation of the models' initializer_range (0.02), 1-D tensors (norm scales) 1.
transformers' normal_ init takes minutes at 5.77B on a CPU, and torch's uniform_ runs on one core: here each chunk of
a tensor has its own generator (from the seed, the tensor's index and the chunk's), so the chunks fill on every core
and the values do not depend on how many cores there are."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import torch

STD = 0.02
CHUNK = 1 << 22  # elements a draw: a big tensor (a 151,936-row embedding) spreads over the cores too


def fill_random(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    bound = STD * 3 ** 0.5  # uniform(-b, b) has standard deviation STD
    params = list(model.parameters())
    with torch.no_grad():
        for p in params:
            if p.dim() <= 1:
                p.fill_(1.0)
    work = [(i, start) for i, p in enumerate(params) if p.dim() > 1 for start in range(0, p.numel(), CHUNK)]

    def fill(item: tuple[int, int]) -> None:
        index, start = item
        flat = params[index].view(-1)
        part = flat[start:start + CHUNK]
        gen = torch.Generator(device=flat.device).manual_seed((seed << 40) + (index << 20) + start // CHUNK)
        with torch.no_grad():  # no_grad is per thread
            if part.dtype == torch.float32:
                part.uniform_(-bound, bound, generator=gen)
            else:  # drawn in fp32 and cast: faster than drawing in bf16 on a CPU
                part.copy_(torch.empty(part.numel(), device=flat.device).uniform_(-bound, bound, generator=gen))

    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        list(pool.map(fill, work))
    return model
