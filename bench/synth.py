"""Synthesis and listening figures on CPU: the real-time factor of our generation path (transformers' generate on
the native model) against boson_multimodal's HiggsAudioServeEngine on the same prompts (in the oracle venv), and the
share of training time the listening evaluation takes at the demo's settings (the same training without it is the
baseline).

Run: .venv/bin/python -m bench.synth
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from bench.common import PRECISION, REPO, WORK, fixtures, speech, table

FRAMES = 100  # per prompt: 4 s of audio at most


def prompts(sp: Path, n: int = 3):
    from higgs_ds.listening.prompts import Prompt, Reference

    utts = [json.loads(x) for x in (sp / "utterances.jsonl").read_text().splitlines()]
    return [Prompt(f"p{i}", "bench", utts[i + 1]["text"], [Reference(utts[i]["text"], str(sp / utts[i]["audio"]))])
            for i in range(n)]


def real_time_factor(fx: Path, sp: Path) -> list[tuple[str, str, str]]:
    """Our generation (transformers' generate on the native model) against boson's HiggsAudioServeEngine (the
    oracle venv) on the same prompts, both after a warm-up."""
    from bench.oracle import oracle
    from higgs_ds.data.codec import load_audio_tokenizer
    from higgs_ds.listening.synthesis import ModelSource, SynthesisConfig, load_model_for_generation, synthesizer_for

    model, tok, _ = load_model_for_generation(ModelSource(model=str(fx / "model"), tokenizer=str(fx / "tokenizer")),
                                              "cpu")
    ours = synthesizer_for(model, tok, load_audio_tokenizer(str(fx / "audio_tokenizer"), "cpu"))
    cfg = SynthesisConfig(max_new_tokens=FRAMES)
    ours.generate(prompts(sp, 1)[0], cfg)  # warm-up: first encode and generate
    ours_s = ours_audio = 0.0
    for p in prompts(sp):
        t0 = time.perf_counter()
        ours_audio += ours.generate(p, cfg).seconds
        ours_s += time.perf_counter() - t0
    ours_rtf = ours_s / ours_audio
    rows = [("synthesis real-time factor (tiny model, CPU)", f"{ours_rtf:.3f}",
             f"{ours_audio:.1f} s of audio in {ours_s:.1f} s, reference encoded from its file; transformers' "
             f"generate on HiggsAudioV2ForConditionalGeneration")]
    spec = WORK / "serve-prompts.json"
    spec.write_text(json.dumps([p.messages() for p in prompts(sp)]))
    engine = oracle("serve", fx, spec, FRAMES)
    if engine:
        engine_rtf = engine["seconds"] / engine["audio_seconds"]
        rows.append(("  HiggsAudioServeEngine.generate, same prompts", f"{engine_rtf:.3f}",
                     f"boson's model and generate (transformers 4.46, the oracle venv); ours / engine: "
                     f"{ours_rtf / engine_rtf:.2f}x"))
    return rows


def demo_shards(fx: Path) -> tuple[Path, Path]:
    sp = speech(4, 6)
    out = WORK / "demo-shards"
    common = ["--audio-tokenizer", fx / "audio_tokenizer", "--text-tokenizer", fx / "tokenizer", "--cache-dir",
              WORK / "code-cache", "--shard-size", 8]
    for name, manifest in (("train", "utterances.jsonl"), ("val", "chatml.jsonl")):
        if not (out / name / "index.json").is_file():
            subprocess.run([sys.executable, "-m", "higgs_ds.cli", "shards", "build", "--input", sp / manifest, "--out",
                            out / name, *[str(c) for c in common]], cwd=REPO, check=True, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    return out / "train", out / "val"


def eval_share(fx: Path) -> list[tuple[str, str, str]]:
    """configs/demo.yaml (60 steps, 2 ranks, listening at steps 30 and 60) against the same run with
    eval.synth_every=0."""
    train, val = demo_shards(fx)
    walls, listen_s, generate_s, score_s, load_s = {}, 0.0, 0.0, 0.0, 0.0
    for synth in (30, 0):
        run = WORK / f"demo-run-synth{synth}"
        shutil.rmtree(run, ignore_errors=True)
        cmd = [Path(sys.executable).parent / "torchrun", "--nproc_per_node", "2", "--master_port", "29631",
               "higgs_ds/train.py", "--deepspeed", "ds_configs/zero2.json", "--config", "configs/demo.yaml",
               f"run_dir={run}", f"model.path={fx / 'model'}", f"model.tokenizer={fx / 'tokenizer'}",
               f"data.train={train}", f"data.val={val}", f"eval.synth_every={synth}", "progress_bar=false",
               f"precision={PRECISION}"]
        t0 = time.perf_counter()
        subprocess.run([str(c) for c in cmd], cwd=REPO, env=os.environ, check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        walls[synth] = time.perf_counter() - t0
        if synth:
            rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
            listens = [r for r in rows if r.get("split") == "listen"]
            listen_s = sum(r["synth_seconds"] for r in listens)
            generate_s, score_s, load_s = (sum(r[k] for r in listens)
                                           for k in ("generate_seconds", "score_seconds", "load_seconds"))
    share = (walls[30] - walls[0]) / walls[30]
    return [("demo training with listening (2 evaluations x 2 prompts)", f"{walls[30]:.1f} s",
             f"without: {walls[0]:.1f} s (ratio {walls[30] / walls[0]:.2f}x)"),
            ("  share of the run the listening evaluations take", f"{share:.1%}",
             f"their own clock: {listen_s:.1f} s ({generate_s:.1f} s generating, {score_s:.1f} s scoring), "
             f"{listen_s / walls[30]:.1%}; loading the audio tokenizer, the scoring models and the ground truth's "
             f"scores at the first: {load_s:.1f} s, {load_s / walls[30]:.1%}")]


def main() -> list[tuple[str, str, str]]:
    fx = fixtures()
    return real_time_factor(fx, speech()) + eval_share(fx)


if __name__ == "__main__":
    table("synthesis and listening", main())
