"""RUN/report.html: loss and metric curves, and for each listening evaluation a table of scores with audio players
for the reference, the generated clip and the ground truth. One self-contained file (plots are inline SVG: no
plotting library, nothing fetched); audio is linked by relative path, so the run directory can be copied."""

from __future__ import annotations

import html
import json
import math
import os
from pathlib import Path

from higgs_ds.files import atomic_write

COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"]
NEAR_EMPTY_SECONDS = 0.5  # a generated clip shorter than this is marked: it plays as 0:00 and says next to nothing
TABLE_COLUMNS = [("similarity", "similarity", 3), ("wer", "WER", 3), ("cer", "CER", 3), ("dnsmos", "DNSMOS", 2),
                 ("seconds", "seconds", 2), ("duration_ratio", "duration ratio", 2)]


def nice_ticks(lo: float, hi: float, min_ticks: int = 3, integer: bool = False) -> tuple[list[float], int]:
    """Round tick values inside [lo, hi] (steps of 1, 2 or 5 times a power of ten, the largest that gives MIN_TICKS),
    and the decimals that print them distinctly: values that are almost equal still get labels that differ."""
    power = 10.0 ** math.floor(math.log10(hi - lo))

    def ticks_of(step: float) -> list[float]:
        first = math.ceil(lo / step - 1e-9)
        return [(first + k) * step for k in range(int(hi / step + 1e-9) - first + 1)]

    steps = [m * power / 10 ** k for k in range(4) for m in (5, 2, 1)]
    if integer:
        steps = [st for st in steps if st >= 1] or [1.0]
    step = next((st for st in steps if len(ticks_of(st)) >= min_ticks), steps[-1])
    decimals = 0 if integer else max(0, -math.floor(math.log10(step) + 1e-9))
    return ticks_of(step), decimals


def line_plot(title: str, series: dict[str, list[tuple[float, float]]], width: int = 460, height: int = 220) -> str:
    """An SVG line chart of SERIES (name -> [(x, y)]), with axis ranges, ticks and a legend."""
    points = [(x, y) for pts in series.values() for x, y in pts if y is not None and math.isfinite(y)]
    if not points:
        return ""
    left, right, top, bottom = 48, 12, 24, 28
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    x0, x1 = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
    y0, y1 = min(ys), max(ys) if max(ys) > min(ys) else min(ys) + 1
    pad = 0.05 * (y1 - y0)
    y0, y1 = y0 - pad, y1 + pad

    def sx(x):
        return left + (x - x0) / (x1 - x0) * (width - left - right)

    def sy(y):
        return height - bottom - (y - y0) / (y1 - y0) * (height - top - bottom)

    parts = [f'<svg class="plot" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
             f'xmlns="http://www.w3.org/2000/svg" role="img" aria-label="{html.escape(title)}">',
             f'<text x="{left}" y="15" font-size="13" font-weight="bold">{html.escape(title)}</text>',
             f'<rect x="{left}" y="{top}" width="{width - left - right}" height="{height - top - bottom}" '
             f'fill="none" stroke="#ccc"/>']
    yticks, decimals = nice_ticks(y0, y1)
    for y in yticks:
        parts.append(f'<text class="ytick" x="{left - 4}" y="{sy(y) + 4:.1f}" font-size="10" text-anchor="end">'
                     f'{y:.{decimals}f}</text>')
    for x in nice_ticks(x0, x1, integer=True)[0]:
        parts.append(f'<text class="xtick" x="{sx(x):.1f}" y="{height - 10}" font-size="10" '
                     f'text-anchor="middle">{x:.0f}</text>')
    for k, (name, pts) in enumerate(series.items()):
        pts = [(x, y) for x, y in pts if y is not None and math.isfinite(y)]
        if not pts:
            continue
        color = COLORS[k % len(COLORS)]
        coords = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in pts)
        parts.append(f'<polyline class="series" fill="none" stroke="{color}" stroke-width="1.5" points="{coords}"/>')
        if len(pts) == 1:
            parts.append(f'<circle cx="{sx(pts[0][0]):.1f}" cy="{sy(pts[0][1]):.1f}" r="3" fill="{color}"/>')
        parts.append(f'<text x="{width - right - 4}" y="{top + 14 + 13 * k}" font-size="11" text-anchor="end" '
                     f'fill="{color}">{html.escape(name)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _rows(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def _audio(path: str | None, run_dir: Path) -> str:
    if not path or not Path(path).is_file():
        return '<span class="missing">-</span>'
    rel = os.path.relpath(path, run_dir)
    return f'<audio controls preload="metadata" src="{html.escape(rel)}"></audio>'


def _players(r: dict, run_dir: Path) -> str:
    """The reference, generated and ground-truth clips of a prompt, stacked in one cell (three players side by side
    would not fit a 1200 px window beside the scores)."""
    seconds = (r.get("generated") or {}).get("seconds")
    near_empty = seconds is not None and seconds < NEAR_EMPTY_SECONDS
    rows = [("reference", _audio(r.get("ref_wav"), run_dir), ""),
            ("generated", _audio(r.get("wav"), run_dir),
             f'<span class="near-empty">near-empty: {seconds:.2f} s</span>' if near_empty else ""),
            ("ground truth", _audio(r.get("target_audio"), run_dir), "")]
    if "error" in r:
        rows = rows[:1]
    return '<div class="players">' + "".join(f'<div class="player"><span class="label">{label}</span>{player}{mark}'
                                             f'</div>' for label, player, mark in rows) + "</div>"


def _cell(value, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _evaluation(scores: dict, run_dir: Path, best_step: int | None) -> str:
    step = scores["step"]
    mark = " (best)" if step == best_step else ""
    head = "".join(f"<th>{label}</th>" for _, label, _ in TABLE_COLUMNS)
    out = [f'<section class="evaluation" id="step{step}"><h2>Step {step}{mark}</h2>',
           f'<table class="scores"><thead><tr><th>prompt</th><th>text</th>{head}<th>listen</th></tr></thead><tbody>']
    for r in scores["prompts"]:
        text = html.escape(r.get("text") or "")
        prompt = f'<td>{html.escape(str(r["id"]))}</td><td class="text">{text}</td>'
        if "error" in r:
            out.append(f'<tr class="failed">{prompt}<td colspan="{len(TABLE_COLUMNS)}">failed: '
                       f'{html.escape(r["error"])}</td><td>{_players(r, run_dir)}</td></tr>')
            continue
        cells = "".join(f"<td>{_cell(r['generated'].get(k), d)}</td>" for k, _, d in TABLE_COLUMNS)
        seconds = r["generated"].get("seconds")
        near_empty = " near-empty" if seconds is not None and seconds < NEAR_EMPTY_SECONDS else ""
        out.append(f'<tr class="prompt{near_empty}">{prompt}{cells}<td rowspan="{2 if "ground_truth" in r else 1}">'
                   f'{_players(r, run_dir)}</td></tr>')
        if "ground_truth" in r:  # the ceiling: the speaker's own recording scored the same way
            cells = "".join(f"<td>{_cell(r['ground_truth'].get(k), d)}</td>" for k, _, d in TABLE_COLUMNS)
            out.append(f'<tr class="truth"><td></td><td>ground truth</td>{cells}</tr>')
    mean = scores["mean"]
    cells = "".join(f"<td>{_cell(mean.get(k), d)}</td>" for k, _, d in TABLE_COLUMNS)
    out.append(f'<tr class="mean"><td>mean</td><td>{mean.get("prompts", 0) - mean.get("failed", 0)} of '
               f'{mean.get("prompts", 0)} generated in {mean.get("synth_seconds", 0):.1f} s</td>{cells}<td></td></tr>')
    truth = scores.get("ground_truth_mean") or {}
    if any(truth.get(k) is not None for k, _, _ in TABLE_COLUMNS):
        cells = "".join(f"<td>{_cell(truth.get(k), d)}</td>" for k, _, d in TABLE_COLUMNS)
        out.append(f'<tr class="mean truth"><td>ground truth</td><td>mean</td>{cells}<td></td></tr>')
    out.append("</tbody></table></section>")
    return "".join(out)


def run_name(run_dir: Path) -> str:
    """What the report calls the run: its directory with the one above it (runs/vctk-lora, demo/run), as one name
    alone is often just "run"."""
    run_dir = run_dir.resolve()
    return f"{run_dir.parent.name}/{run_dir.name}" if run_dir.parent.name else run_dir.name


def write_report(run_dir: str | Path) -> Path:
    """Write RUN/report.html from metrics.jsonl and RUN/samples/step*/scores.json."""
    run_dir = Path(run_dir)
    rows = _rows(run_dir)
    train = [r for r in rows if r.get("split") is None]
    evals = [r for r in rows if r.get("split") == "eval"]
    listens = [r for r in rows if r.get("split") == "listen"]
    best = json.loads((run_dir / "best.json").read_text()) if (run_dir / "best.json").is_file() else None

    def pts(rs, key):
        return [(r["step"], r.get(key)) for r in rs]

    plots = [line_plot("training loss", {"loss": pts(train, "loss"), "text": pts(train, "text_loss"),
                                          "audio": pts(train, "audio_loss")}),
             line_plot("eval loss", {"loss": pts(evals, "loss"), "text": pts(evals, "text_loss"),
                                     "audio": pts(evals, "audio_loss")}),
             line_plot("eval audio accuracy", {"top-1": pts(evals, "audio_top1"), "top-5": pts(evals, "audio_top5")}),
             line_plot("speaker similarity", {"similarity": pts(listens, "similarity")}),
             line_plot("WER / CER", {"WER": pts(listens, "wer"), "CER": pts(listens, "cer")}),
             line_plot("DNSMOS", {"overall": pts(listens, "dnsmos"), "signal": pts(listens, "dnsmos_sig"),
                                  "background": pts(listens, "dnsmos_bak")})]
    sections = []
    for path in sorted((run_dir / "samples").glob("step*/scores.json"), reverse=True):
        scores = json.loads(path.read_text())
        sections.append(_evaluation(scores, run_dir, best["step"] if best else None))
    summary = [f"<li>run directory: <code>{html.escape(str(run_dir.resolve()))}</code></li>",
               f"<li>steps logged: {train[-1]['step'] if train else 0}</li>"]
    if best:
        summary.append(f"<li>best checkpoint: step {best['step']} ({html.escape(best.get('select', ''))} score "
                       f"{best['score']:.4f}), <code>{html.escape(best['checkpoint'])}</code></li>")
    name = html.escape(run_name(run_dir))
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{name} · higgs-ds report</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 24px; color: #222; }}
.plots {{ display: flex; flex-wrap: wrap; gap: 12px; }}
table.scores {{ border-collapse: collapse; margin-bottom: 24px; }}
table.scores th, table.scores td {{ border: 1px solid #ddd; padding: 4px 8px; font-size: 13px; text-align: left;
  vertical-align: top; }}
td.text {{ max-width: 280px; overflow-wrap: anywhere; }}
.player {{ display: flex; align-items: center; gap: 6px; flex-wrap: wrap; }}
.player .label {{ width: 80px; color: #555; }}
.near-empty {{ color: #a60; font-weight: bold; }}
tr.mean td {{ font-weight: bold; background: #f4f4f4; }}
tr.failed td {{ color: #a00; }}
tr.truth td {{ color: #555; font-style: italic; }}
audio {{ height: 32px; width: 220px; }}
</style></head>
<body>
<h1>{name}</h1>
<ul class="summary">{''.join(summary)}</ul>
<div class="plots">{''.join(p for p in plots if p)}</div>
{''.join(sections) if sections else '<p>No listening evaluation yet (eval.synth_every).</p>'}
</body></html>
"""
    out = run_dir / "report.html"
    atomic_write(out, page)
    return out
