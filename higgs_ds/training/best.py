"""Which checkpoint is the best: each evaluation's score under `eval.select` (lower is better), and patience."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from higgs_ds.config import EvalConfig


@dataclass
class Best:
    score: float | None = None
    step: int | None = None
    evals_since: int = 0  # evaluations since the best one

    def to_dict(self) -> dict:
        return asdict(self)

    def update(self, score: float, step: int, patience: int) -> tuple[bool, bool]:
        """Record STEP's score: (whether it is the new best, whether PATIENCE evaluations have passed without
        one; 0 never stops)."""
        if self.score is None or score < self.score:
            self.score, self.step, self.evals_since = score, step, 0
            return True, False
        self.evals_since += 1
        return False, bool(patience) and self.evals_since >= patience


def metrics_used(ev: EvalConfig) -> list[str]:
    if ev.select == "mix":
        return [k for k, w in ev.select_weights.items() if w]
    return [ev.select]


def selection_score(ev: EvalConfig, eval_row: dict | None, listen_row: dict | None) -> float | None:
    """The step's score, or None when its evaluations lack what `select` needs (not a selection step). A metric
    that was needed but measured nothing (every prompt failed) scores inf: such a step cannot be the best.
    loss is the teacher-forced eval loss, similarity enters as 1 - similarity, wer as it is."""
    used = metrics_used(ev)
    if ("loss" in used and eval_row is None) or (any(k != "loss" for k in used) and listen_row is None):
        return None
    values = {"loss": eval_row.get("loss") if eval_row else None,
              "similarity": None if not listen_row or listen_row.get("similarity") is None
              else 1.0 - listen_row["similarity"],
              "wer": listen_row.get("wer") if listen_row else None}
    if any(values[k] is None or not math.isfinite(values[k]) for k in used):
        return math.inf
    weights = ev.select_weights if ev.select == "mix" else {ev.select: 1.0}
    return float(sum(weights[k] * values[k] for k in used))
