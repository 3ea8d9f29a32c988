"""Runs higgs_ds/train.py with torch.Tensor's host reads counted per optimizer step, by who asked for them, and
with the loss and statistics also computed the old way (numbers read to the host) to check they are bit-identical.
Writes $HOST_READS_OUT/rank{R}.json. Used by test_host_reads.py."""

import json
import os
import sys
from collections import Counter
from pathlib import Path

import torch

from higgs_ds import train as train_entry
from higgs_ds.training import loop, stats

READS = ("item", "tolist", "cpu", "__float__", "__int__", "__bool__", "__index__")
LIBRARIES = ("deepspeed", "boson_multimodal", "transformers", "peft", "numpy", "torch")
TENSOR_METHODS = tuple(os.path.join("torch", f) for f in ("_tensor.py", "_tensor_str.py", "overrides.py"))
counting = {"on": False}
per_step: list[Counter] = []
library_lines: Counter = Counter()  # where in a library the reads of the counted steps are
mismatches: list[str] = []


def who(frame) -> str:
    """The innermost caller past torch.Tensor's own Python methods (f"{t:.3f}" reads through __format__):
    "higgs_ds:" and the function's name, else "lib:" and the library (torch's own code, e.g. the DataLoader
    seeding its workers from a CPU generator, counts as torch)."""
    while frame is not None:
        path = frame.f_code.co_filename
        if f"{os.sep}higgs_ds{os.sep}" in path:
            return f"higgs_ds:{frame.f_code.co_qualname}"
        if not path.endswith(TENSOR_METHODS) and path != __file__:
            lib = next((lib for lib in LIBRARIES if f"{os.sep}{lib}{os.sep}" in path), path)
            library_lines[f"{path.split(os.sep + lib + os.sep)[-1]}:{frame.f_lineno} {lib}"] += 1
            return f"lib:{lib}"
        frame = frame.f_back
    return "lib:?"


def instrument(name):
    original = getattr(torch.Tensor, name)

    def counted(self, *args, **kwargs):
        if counting["on"]:
            per_step[-1][who(sys._getframe(1))] += 1
        return original(self, *args, **kwargs)

    setattr(torch.Tensor, name, counted)


def paused(fn, *args):
    was, counting["on"] = counting["on"], False
    try:
        return fn(*args)
    finally:
        counting["on"] = was


def counted_step(*args, **kwargs):
    per_step.append(Counter())
    counting["on"] = True
    try:
        return original_step(*args, **kwargs)
    finally:
        counting["on"] = False


def checked_combine(sums, text_total, audio_total, text_weight, audio_weight):
    """The loss from device counts, and (not counted) from the same counts read to the host: bit-identical."""
    loss = original_combine(sums, text_total, audio_total, text_weight, audio_weight)
    host = paused(lambda: original_combine(sums, float(text_total), float(audio_total), text_weight, audio_weight))
    if not paused(lambda: torch.equal(loss, host)):
        mismatches.append(f"loss {paused(loss.item)!r} vs {paused(host.item)!r}")
    return loss


class CheckedStats(stats.StepStats):
    """Also sums each micro-batch's numbers read to the host as float64 (the arithmetic before the sums stayed on
    the device) and compares at the reduction."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.host_sums = [0.0] * self.sums.numel()

    def add(self, sums, batch, frame_rate, skipped=0):
        super().add(sums, batch, frame_rate, skipped)

        def old_way():
            values = [sums.text_sum.item(), sums.audio_sum.item(), sums.text_tokens.item(), sums.audio_tokens.item()]
            n = self.num_codebooks
            if sums.codebook_tokens.numel():
                values += sums.codebook_sums.cpu().numpy().tolist() + sums.codebook_tokens.cpu().numpy().tolist()
            else:
                values += [0.0] * 2 * n
            self.host_sums = [a + b for a, b in zip(self.host_sums, values)]

        paused(old_way)

    def all_reduced(self, *args, **kwargs):
        if paused(self.sums.tolist) != self.host_sums:
            mismatches.append(f"step sums {paused(self.sums.tolist)} vs {self.host_sums}")
        return super().all_reduced(*args, **kwargs)


for name in READS:
    instrument(name)
original_step, loop.train_step = loop.train_step, counted_step
original_combine, loop.combine = loop.combine, checked_combine
loop.StepStats = CheckedStats

if __name__ == "__main__":
    rc = train_entry.main(sys.argv[1:])
    out = Path(os.environ["HOST_READS_OUT"])
    out.mkdir(parents=True, exist_ok=True)
    rank = int(os.environ.get("RANK", 0))
    (out / f"rank{rank}.json").write_text(json.dumps({"rc": rc, "per_step": [dict(c) for c in per_step],
                                                      "mismatches": mismatches,
                                                      "library_lines": dict(library_lines.most_common())}))
    sys.exit(rc)
