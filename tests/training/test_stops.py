"""The divergence guard on step rows: what stops a run as dead, and what a healthy or slow run looks like to it.
The runs of the whole suite (and the demo) pass through it with its defaults; tests/training/test_train_runs.py
kills a real run with a learning rate of 1e6."""

import json
import math

from higgs_ds.training.stops import DivergenceGuard

TEXT, AUDIO = math.log(512), math.log(1026)


def row(step, loss, grad_norm=1.0, text_tokens=3, audio_tokens=100, skipped_now=0):
    return {"step": step, "loss": loss, "grad_norm": grad_norm, "text_tokens": text_tokens,
            "audio_tokens": audio_tokens, "skipped_now": skipped_now}


def guard(steps=3):
    return DivergenceGuard(steps, TEXT, AUDIO)


def test_each_family_gives_the_vocabularies_of_its_uniform_guess(native_model, fixtures_dir):
    from higgs_ds.models.higgs_v2.backend import BACKEND as V2
    from higgs_ds.models.higgs_v3.backend import BACKEND as V3

    _, model, _ = native_model
    assert V2.vocabularies(model.config) == (model.config.vocab_size, 1026)
    v3 = json.loads((fixtures_dir / "v3_model" / "config.json").read_text())
    assert V3.vocabularies(v3) == (512, 1026)


def test_a_zero_gradient_norm_with_labels_stops_after_the_configured_steps():
    g = guard()
    assert g.check(row(1, 13.3)) is None
    assert g.check(row(2, 13.2, 0.0)) is None and g.check(row(3, 13.2, 0.0)) is None
    evidence = g.check(row(4, 13.2, 0.0))
    assert evidence.startswith("the gradient norm was exactly 0.0 at steps 2-4") and g.first_dead_step == 2


def test_zero_norm_steps_without_labels_or_interrupted_do_not_stop():
    g = guard()
    for step in range(1, 10):  # a step with nothing to train on has nothing to push
        assert g.check(row(step, 0.0, 0.0, text_tokens=0, audio_tokens=0)) is None
    for step in range(10, 30):
        assert g.check(row(step, 12.0, 0.0 if step % 3 else 0.5)) is None  # never 3 in a row
    assert g.first_dead_step is None


def test_the_uniform_loss_stops_only_after_the_run_was_below_it():
    uniform = TEXT + AUDIO
    g = guard()
    for step in range(1, 6):  # a random model starts at (about) the uniform loss: that is no divergence
        assert g.check(row(step, uniform)) is None
    assert g.check(row(6, uniform - 1.0)) is None
    assert g.check(row(7, uniform)) is None and g.check(row(8, uniform * (1 + 5e-5))) is None
    evidence = g.check(row(9, uniform))
    assert "entropy of a uniform guess" in evidence and "steps 7-9" in evidence and g.first_dead_step == 7


def test_a_loss_near_but_not_at_the_uniform_value_is_a_slow_run():
    g = guard()
    g.check(row(1, TEXT + AUDIO - 1.0))
    for step in range(2, 20):
        assert g.check(row(step, TEXT + AUDIO - 0.01)) is None


def test_the_uniform_value_counts_only_the_losses_the_step_has():
    g = guard(1)
    g.check(row(1, AUDIO - 1.0, text_tokens=0))
    assert g.check(row(2, AUDIO, text_tokens=0)) is not None


def test_a_non_finite_update_stops_at_once_and_a_skipped_one_does_not():
    g = guard()
    assert g.check(row(1, float("inf"), float("inf"), skipped_now=1)) is None  # max_skipped_steps bounds those
    assert "non-finite" in g.check(row(2, 13.0, float("nan")))
    assert g.first_dead_step == 2


def test_zero_steps_turns_the_two_slow_checks_off():
    g = guard(0)
    g.check(row(1, 1.0))
    assert all(g.check(row(s, TEXT + AUDIO, 0.0)) is None for s in range(2, 10))
    assert g.check(row(10, float("nan"))) is not None
