"""The best-checkpoint score of an evaluation under each eval.select, and the config checks that guard it."""

import math

import pytest

from higgs_ds.config import ConfigError, EvalConfig, load_config
from higgs_ds.training.best import selection_score

EVAL = {"loss": 2.5}
LISTEN = {"similarity": 0.8, "wer": 0.25}


@pytest.mark.parametrize("select, weights, eval_row, listen_row, score", [
    ("loss", None, EVAL, None, 2.5),
    ("loss", None, None, LISTEN, None),  # a listening-only step is not a loss evaluation
    ("similarity", None, EVAL, LISTEN, 1 - 0.8),
    ("similarity", None, EVAL, None, None),
    ("wer", None, None, LISTEN, 0.25),
    ("mix", {"loss": 1.0, "similarity": 2.0, "wer": 0.5}, EVAL, LISTEN, 2.5 + 2 * 0.2 + 0.5 * 0.25),
    ("mix", {"loss": 1.0, "similarity": 2.0, "wer": 0.0}, EVAL, {"similarity": 0.8, "wer": None}, 2.5 + 0.4),
    ("mix", {"loss": 1.0, "similarity": 1.0, "wer": 0.0}, None, LISTEN, None),
    ("similarity", None, None, {"similarity": None, "wer": None}, math.inf),  # every prompt failed
])
def test_selection_score(select, weights, eval_row, listen_row, score):
    ev = EvalConfig(select=select, **({"select_weights": weights} if weights else {}))
    got = selection_score(ev, eval_row, listen_row)
    assert got == (pytest.approx(score) if score not in (None, math.inf) else score)


@pytest.mark.parametrize("overrides, message", [
    (["eval.select=similarity"], "eval.select: similarity needs listening evaluations: set eval.synth_every"),
    (["eval.select=wer", "eval.synth_every=10"], "eval.select: wer needs WER: set eval.asr_model"),
    (["eval.select=best"], "eval.select: must be one of loss, similarity, wer, mix, got 'best'"),
    (["eval.select_weights={speed: 1}"], "eval.select_weights: keys must be loss, similarity, wer; got ['speed']"),
    (["eval.prompts=nowhere.jsonl"], "eval.prompts: nowhere.jsonl does not exist"),
    (["eval.patience=-1"], "eval.patience: must be >= 0"),
])
def test_eval_config_errors_name_the_key(shards, overrides, message):
    with pytest.raises(ConfigError) as err:
        load_config(None, [f"data.train={shards}", f"data.val={shards}", *overrides])
    assert str(err.value).startswith(message)


def test_mark_best_points_at_the_best_checkpoint(tmp_path):
    """RUN/best and RUN/checkpoints/best follow the newest best (retention keeping it is tested with real runs in
    tests/listening/test_listening_runs.py and tests/training/test_train_runs.py)."""
    from higgs_ds.checkpoints import saving

    root = tmp_path / "checkpoints"
    for step in (2, 4, 6):
        (root / saving.tag(step)).mkdir(parents=True)
        (root / saving.tag(step) / "COMPLETE").write_text("{}")
    saving.mark_best(tmp_path, 2, {"select": "loss", "score": 1.0})
    assert (tmp_path / "best").resolve() == (root / "step00000002").resolve()
    assert (root / "best").read_text() == "step00000002"
    saving.mark_best(tmp_path, 4, {"select": "loss", "score": 0.5})
    assert (tmp_path / "best").resolve() == (root / "step00000004").resolve()


def test_best_update_and_patience():
    from higgs_ds.training.best import Best

    best = Best()
    assert best.update(3.0, 10, patience=2) == (True, False)
    assert best.update(3.5, 20, patience=2) == (False, False) and best.evals_since == 1
    assert best.update(2.0, 30, patience=2) == (True, False) and (best.step, best.evals_since) == (30, 0)
    assert best.update(2.0, 40, patience=2) == (False, False)  # equal is not better
    assert best.update(9.0, 50, patience=2) == (False, True)
    assert Best(**best.to_dict()) == best  # what a checkpoint stores and a resume restores
    assert Best().update(1.0, 1, 0) == (True, False) and not Best(1.0, 1, 5).update(2.0, 2, 0)[1]
