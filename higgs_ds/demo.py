"""`make demo`: the whole job on tiny built-in fixtures on CPU. Fixtures, espeak-ng speech, shards, a 2-rank
DeepSpeed ZeRO-2 LoRA run with listening evaluations, the exported adapter and a merged model, one sentence
synthesized with the adapter and with the base model and scored, then a summary of where everything is."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def step(title: str) -> None:
    print(f"\n=== {title}", flush=True)


def run(cmd: list, **kw) -> None:
    print("$ " + " ".join(str(c) for c in cmd), flush=True)
    subprocess.run([str(c) for c in cmd], check=True, cwd=REPO, **kw)


CLI = [sys.executable, "-m", "higgs_ds.cli"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="demo")
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--steps", type=int, default=60)
    args = parser.parse_args(argv)
    out = (REPO / args.out).resolve()
    fixtures = out / "fixtures"
    from higgs_ds.fixtures import offline_env

    env = {**os.environ, **offline_env(fixtures), "TOKENIZERS_PARALLELISM": "false"}
    os.environ.update(env)
    t0 = time.time()
    make_inputs(out, fixtures, env)

    step(f"4/6 LoRA training: deepspeed --num_gpus {args.ranks}, ZeRO-2, bf16, on CPU (gloo)")
    run_dir = out / "run"
    overrides = [f"run_dir={run_dir}", f"model.path={fixtures / 'model'}", f"model.tokenizer={fixtures / 'tokenizer'}",
                 f"data.train={out / 'shards/train'}", f"data.val={out / 'shards/val'}", f"steps={args.steps}"]
    run([Path(sys.executable).parent / "deepspeed", "--num_gpus", args.ranks, "higgs_ds/train.py", "--deepspeed",
         "ds_configs/zero2.json", "--config", "configs/demo.yaml", *overrides], env=env)

    step("5/6 export: the adapter (peft) and a merged bf16 model, in the transformers-native layout and boson's")
    run(CLI + ["export", "--checkpoint", run_dir, "--out", out / "merged", "--merge"], env=env)
    run(CLI + ["export", "--checkpoint", run_dir, "--out", out / "merged-boson", "--merge", "--layout", "boson"],
        env=env)

    step("6/6 listen: one sentence in speaker spk0's voice, with the trained adapter and with the base model")
    scores, target = listen(out, fixtures, run_dir, env)
    return print_summary(out, run_dir, scores, target, time.time() - t0)


def make_inputs(out: Path, fixtures: Path, env: dict) -> None:
    """Steps 1-3: the fixtures, espeak-ng speech and the shard sets (each kept when already there)."""
    from higgs_ds.fixtures import fixtures_current

    step("1/6 tiny random Higgs-Audio stack (model, text tokenizer, audio tokenizer), built locally")
    if not fixtures_current(fixtures):
        import shutil

        run(CLI + ["fixtures", "--out", fixtures], env=env)
        for stale in ("shards", "code-cache", "run"):  # made with the fixtures of an older version
            shutil.rmtree(out / stale, ignore_errors=True)
    else:
        print(f"reusing {fixtures}")

    step("2/6 speech from espeak-ng: 4 speakers x 6 utterances")
    data = out / "data"
    if not (data / "utterances.jsonl").is_file():
        run(CLI + ["sample-data", "--out", data, "--speakers", 4, "--utterances", 6], env=env)

    step("3/6 shards: validate, build (utterances paired into zero-shot cloning records), verify, inspect")
    common = ["--audio-tokenizer", fixtures / "audio_tokenizer", "--text-tokenizer", fixtures / "tokenizer",
              "--cache-dir", out / "code-cache"]
    run(CLI + ["shards", "validate", "--input", data / "utterances.jsonl"], env=env)
    run(CLI + ["shards", "build", "--input", data / "utterances.jsonl", "--out", out / "shards/train",
               "--shard-size", 8, "--refs-per-target", 1, *common], env=env, stdout=subprocess.DEVNULL)
    # validation: the same utterances paired with other references (a smoke check of the eval path, not held out)
    run(CLI + ["shards", "build", "--input", data / "chatml.jsonl", "--out", out / "shards/val", "--shard-size", 8,
               *common], env=env, stdout=subprocess.DEVNULL)
    run(CLI + ["shards", "verify", out / "shards/train"], env=env)
    run(CLI + ["shards", "inspect", out / "shards/train"], env=env)


def listen(out: Path, fixtures: Path, run_dir: Path, env: dict) -> tuple[dict, dict]:
    """One sentence synthesized with the run's adapter and with the base model, each scored: (scores by name, the
    target utterance)."""
    data = out / "data"
    utts = [json.loads(x) for x in (data / "utterances.jsonl").read_text().splitlines()]
    ref, target = [u for u in utts if u["speaker"] == "spk0"][:2]
    prompt = ["--ref-audio", data / ref["audio"], "--ref-text", ref["text"], "--text", target["text"],
              "--target-audio", data / target["audio"], "--audio-tokenizer", fixtures / "audio_tokenizer",
              "--max-new-tokens", 100, "--seed", 0, "--quiet"]
    scores = {}
    base = ["--model", fixtures / "model", "--text-tokenizer", fixtures / "tokenizer"]
    for name, model in (("adapter", ["--checkpoint", run_dir]), ("base", base)):
        wav = out / "listen" / f"{name}.wav"
        run(CLI + ["synthesize", *model, *prompt, "--out", wav], env=env, stdout=subprocess.DEVNULL)
        run(CLI + ["score", wav.with_suffix(".json"), "--quiet"], env=env)
        scores[name] = json.loads(wav.with_suffix(".scores.json").read_text())["prompts"][0]["generated"]
    return scores, target


def print_summary(out: Path, run_dir: Path, scores: dict, target: dict, seconds: float) -> int:
    """Where everything is, the losses, and the scores; 1 if the audio loss did not fall."""
    summary = json.loads((run_dir / "summary.json").read_text())
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if r.get("split") == "eval"]
    steps = [r for r in rows if r.get("split") is None]  # one row a step, kept across resumes
    first, last = steps[0], steps[-1]
    again = "" if summary.get("steps_this_run") else (
        f"\n  (the run in {run_dir} already had its {last['step']} steps: it resumed and had nothing left to train; "
        f"rm -r {out} starts the demo over)")
    listened = "\n".join(f"    {name:<8} {out / 'listen' / (name + '.wav')}   similarity {sc['similarity']:.3f}  "
                         f"dnsmos {sc['dnsmos']:.2f}  {sc['seconds']:.2f} s" for name, sc in scores.items())
    print(f"""
=== done in {seconds:.0f} s{again}
  audio loss   {first['audio_loss']:.3f} -> {last['audio_loss']:.3f}   (step 1 -> {last['step']})
  text loss    {first['text_loss']:.3f} -> {last['text_loss']:.3f}
  eval loss    {' -> '.join(f"{e['loss']:.3f}@{e['step']}" for e in evals)}
  shards       {out / 'shards/train'}   (index.json, rejects.jsonl)
  run          {run_dir}   (config.yaml, metrics.jsonl, tensorboard/, checkpoints/)
  adapter      {run_dir / 'adapter'}   (PeftModel.from_pretrained(HiggsAudioV2ForConditionalGeneration, ...))
  merged       {out / 'merged'}   (transformers >= 5.3: HiggsAudioV2ForConditionalGeneration; vLLM-Omni)
  boson        {out / 'merged-boson'}   (boson_multimodal: HiggsAudioModel.from_pretrained; its serve engine)
  report       {run_dir / 'report.html'}   (curves, listening scores, audio players)
  best         {run_dir / 'best'}   (eval.select: {json.loads((run_dir / 'best.json').read_text())['select']})
  resume       re-run the same deepspeed command with steps=N: resume=auto continues from the latest checkpoint
  listen       "{target['text']}" in spk0's voice (speaker similarity to the reference, DNSMOS 1-5, seconds):
{listened}
    (tiny random fixtures: the scores show the path works, not what a real model sounds like)
""")
    if last["audio_loss"] > first["audio_loss"] - 1.0:
        print("the audio loss did not fall as expected", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
