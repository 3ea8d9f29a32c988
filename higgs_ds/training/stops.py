"""When a run must stop on its numbers: too many skipped updates or unreadable samples, or a model that can no
longer learn, told from one that is slow by a non-finite loss or gradient norm in an update that was applied, a
gradient norm of exactly zero while the step had labels, or the loss back at the entropy of a uniform guess after
it had been below it. Every rank sees the same step rows (they are all-reduced), so every rank reaches the same
verdict at the same step."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

UNIFORM_TOLERANCE = 1e-4  # relative: a model whose logits are all equal scores ln(V) to fp32 rounding
BELOW_UNIFORM = 0.05  # nats under the uniform loss that count as "has learned something"


class Diverged(RuntimeError):
    """The run stopped because it can no longer learn; the message names the step and the evidence."""


class TooManySkippedSamples(RuntimeError):
    """More unreadable samples than data.max_skipped_samples: every rank raises it at the same step."""


@dataclass
class DivergenceGuard:
    """Fed each step's metrics row; `check` returns the evidence once the run is dead, else None. `steps` is how
    many consecutive steps of zero gradient norm or uniform loss it takes (0: those two checks are off; a
    non-finite update stops the run at once)."""

    steps: int
    uniform_text: float
    uniform_audio: float
    text_weight: float = 1.0
    audio_weight: float = 1.0
    lowest: float = math.inf  # the lowest loss so far, relative to its uniform value
    zero_norm: list[int] = field(default_factory=list)  # the current run of steps with a zero gradient norm
    at_uniform: list[int] = field(default_factory=list)  # the current run of steps at the uniform loss
    first_dead_step: int | None = None  # set with a verdict: the first step whose numbers were dead

    def uniform(self, row: dict) -> float:
        return (self.text_weight * self.uniform_text * (row["text_tokens"] > 0) +
                self.audio_weight * self.uniform_audio * (row["audio_tokens"] > 0))

    def check(self, row: dict) -> str | None:
        step, loss, norm = row["step"], row["loss"], row["grad_norm"]
        if row["skipped_now"]:  # DeepSpeed skipped the update: max_skipped_steps bounds those
            return None
        if not (math.isfinite(loss) and math.isfinite(norm)):
            self.first_dead_step = step
            return f"step {step} applied an update with a non-finite loss ({loss}) or gradient norm ({norm})"
        if not self.steps:
            return None
        labels = row["text_tokens"] + row["audio_tokens"] > 0
        self.zero_norm = self.zero_norm + [step] if labels and norm == 0.0 else []
        uniform = self.uniform(row)
        learned = self.lowest < -BELOW_UNIFORM
        at_uniform = labels and abs(loss - uniform) <= UNIFORM_TOLERANCE * uniform
        self.at_uniform = self.at_uniform + [step] if at_uniform and learned else []
        if labels:
            self.lowest = min(self.lowest, loss - uniform)
        if len(self.zero_norm) >= self.steps:
            self.first_dead_step = self.zero_norm[0]
            return (f"the gradient norm was exactly 0.0 at steps {self.zero_norm[0]}-{step} while they had labels "
                    f"to train on (loss {loss:.4f})")
        if len(self.at_uniform) >= self.steps:
            self.first_dead_step = self.at_uniform[0]
            return (f"the loss sat at {loss:.4f}, the entropy of a uniform guess ({uniform:.4f}), at steps "
                    f"{self.at_uniform[0]}-{step}, after it had been down to {uniform + self.lowest:.4f}")
        return None


def check_skips(cfg, state, row: dict) -> None:
    """Non-finite steps and unreadable samples so far, against their bounds (every rank has the same counts)."""
    if row["skipped_now"]:
        log.info(f"step {state.step}: non-finite gradients on some rank; every rank skipped the update "
                 f"({state.skipped_steps} skipped so far)")
        if state.skipped_steps > cfg.max_skipped_steps:
            raise Diverged(f"{state.skipped_steps} steps had non-finite loss or gradients (max_skipped_steps="
                           f"{cfg.max_skipped_steps}); lower optim.lr or check the data")
    if state.skipped_samples > cfg.data.max_skipped_samples:
        raise TooManySkippedSamples(
            f"{state.skipped_samples} samples did not read or decode by step {state.step}, over "
            f"data.max_skipped_samples={cfg.data.max_skipped_samples} (each is logged as 'skipped corrupt "
            f"sample' with its shard); check the set with `higgs-ds shards verify {cfg.data.train}`")
