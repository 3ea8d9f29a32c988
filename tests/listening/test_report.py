"""RUN/report.html in a real headless Chromium at 1200 px: its title names the run, nothing is cut off, axis ticks
differ, and near-empty generated clips are marked. The run directory is written here (metrics rows, scores.json, wav
files) in the shapes training writes, so the page is checked in seconds; tests/listening/test_listening_runs.py renders a
trained run's report."""

import json
import re
import shutil

import numpy as np
import pytest
import soundfile as sf

from higgs_ds.listening.report import NEAR_EMPTY_SECONDS, line_plot, nice_ticks, write_report

LONG_TEXT = ("Most of the volunteers who recorded this locale read one sentence and never came back, which is why "
             "the sentences here are long enough to wrap inside their column.")


def _wav(path, seconds):
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(24000 * seconds)) / 24000
    sf.write(path, 0.1 * np.sin(2 * np.pi * 220 * t), 24000)
    return str(path)


@pytest.fixture
def run_dir(tmp_path):
    run = tmp_path / "runs" / "cv-welsh-lora"
    rows = [{"step": s, "loss": 9 - 0.1 * s, "text_loss": 3 - 0.01 * s, "audio_loss": 7 - 0.1 * s} for s in range(1, 41)]
    scores_of = {20: 0.39912, 40: 0.39931}  # almost equal: `.3g` printed 0.399 three times on the axis
    for step, similarity in scores_of.items():
        rows.append({"step": step, "split": "eval", "loss": 8.0, "text_loss": 2.0, "audio_loss": 6.0,
                     "audio_top1": 0.1, "audio_top5": 0.3})
        rows.append({"step": step, "split": "listen", "similarity": similarity, "wer": 0.5, "cer": 0.3,
                     "dnsmos": 2.9, "dnsmos_sig": 3.1, "dnsmos_bak": 3.5})
        prompts = []
        for k, seconds in enumerate((0.16, 2.4, 3.1)):
            d = run / "samples" / f"step{step:08d}"
            scores = {"similarity": similarity, "wer": 0.5, "cer": 0.25, "dnsmos": 2.9, "seconds": seconds,
                      "duration_ratio": seconds / 3.0}
            prompts.append({"id": f"val-speaker-{k:03d}/common_voice_cy_{40000 + k}", "text": LONG_TEXT,
                            "ref_wav": _wav(d / f"ref{k}.wav", 2.0), "wav": _wav(d / f"gen{k}.wav", seconds),
                            "target_audio": _wav(d / f"truth{k}.wav", 3.0), "generated": scores,
                            "ground_truth": {**scores, "seconds": 3.0, "duration_ratio": 1.0}})
        mean = {"prompts": 3, "failed": 0, "synth_seconds": 4.2, "similarity": similarity, "wer": 0.5, "cer": 0.25,
                "dnsmos": 2.9, "seconds": 1.9, "duration_ratio": 0.63}
        (d / "scores.json").write_text(json.dumps({"step": step, "prompts": prompts, "mean": mean,
                                                   "ground_truth_mean": mean}))
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    write_report(run)
    return run


def test_nice_ticks_are_round_distinct_and_inside_the_range():
    ticks, decimals = nice_ticks(0.39901, 0.39942)
    labels = [f"{t:.{decimals}f}" for t in ticks]
    assert labels == ["0.3991", "0.3992", "0.3993", "0.3994"]
    assert nice_ticks(0.0, 10.0) == ([0.0, 5.0, 10.0], 0)
    ticks, decimals = nice_ticks(20.0, 21.0, integer=True)  # one evaluation: steps 20..21, never "20 20 21"
    assert ticks == [20.0, 21.0] and decimals == 0
    svg = line_plot("speaker similarity", {"similarity": [(20, 0.39912), (40, 0.39931)]})
    y_labels = re.findall(r'class="ytick"[^>]*>([^<]+)<', svg)
    assert len(y_labels) >= 3 and len(set(y_labels)) == len(y_labels), y_labels


def test_report_fits_1200px_names_the_run_and_marks_near_empty_clips(run_dir):
    from playwright.sync_api import sync_playwright

    from tests.helpers import chromium_args

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium"), args=chromium_args())
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.goto((run_dir / "report.html").as_uri())
        page.evaluate("""async () => Promise.all([...document.querySelectorAll('audio')].map(a => a.readyState >= 1 ?
            0 : new Promise(done => { a.onloadedmetadata = done; a.onerror = done; setTimeout(done, 10000); })))""")
        title, heading = page.title(), page.locator("h1").inner_text()
        overflow = page.evaluate("""() => {
            const width = document.documentElement.clientWidth;
            const out = [...document.querySelectorAll('table, tr, td, th, audio, svg, .player')]
                .map(e => [e.tagName + '.' + e.className, e.getBoundingClientRect().right])
                .filter(([, right]) => right > width + 0.5);
            return {width, scroll: document.documentElement.scrollWidth, out: out.slice(0, 5)};
        }""")
        players = page.locator("table.scores audio").count()
        marked = page.evaluate("() => [...document.querySelectorAll('tr.prompt')].map(r => "
                               "r.classList.contains('near-empty'))")
        marks = page.locator("span.near-empty").all_inner_texts()
        ticks = page.evaluate("() => [...document.querySelectorAll('svg.plot')].map(s => "
                              "[...s.querySelectorAll('text.ytick')].map(t => t.textContent))")
        browser.close()
    assert title == "runs/cv-welsh-lora · higgs-ds report" and heading == "runs/cv-welsh-lora"
    assert overflow["width"] == 1200 and overflow["scroll"] <= 1200 and not overflow["out"], overflow
    assert players == 2 * 3 * 3  # reference, generated and ground truth of 3 prompts at 2 steps
    assert marked == [True, False, False] * 2 and 0.16 < NEAR_EMPTY_SECONDS < 2.4
    assert marks == ["near-empty: 0.16 s"] * 2
    assert len(ticks) == 6 and all(len(t) >= 2 and len(set(t)) == len(t) for t in ticks), ticks
