"""The baselines that only boson_multimodal's own model code can give, measured in the oracle venv (.venv-boson:
transformers 4.46, where it imports): its collator's time on given samples, and its serve engine's real-time factor
on given prompts. The benchmarks call `oracle(...)`; this module is also the command they run there.

    .venv-boson/bin/python -m bench.oracle collate SAMPLES.pkl
    .venv-boson/bin/python -m bench.oracle serve FIXTURES PROMPTS.json FRAMES
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BOSON_PY = REPO / ".venv-boson" / "bin" / "python"


def oracle(*args) -> dict | None:
    """The JSON a command of this module prints in the oracle venv; None (and why, on stderr) without that venv."""
    if not BOSON_PY.is_file():
        print(f"no {BOSON_PY} (`make boson-venv`): the boson baselines are left out", file=sys.stderr)
        return None
    proc = subprocess.run([str(BOSON_PY), "-m", "bench.oracle", *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    if proc.returncode:
        raise RuntimeError(f"bench.oracle {args[0]} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def collate(samples_path: str) -> dict:
    """Seconds (best of 3) for boson's HiggsAudioSampleCollator on the pickled (settings, batches of samples)."""
    from tests.oracle.boson_v2 import BosonCollator

    settings, batches = pickle.loads(Path(samples_path).read_bytes())
    collator = BosonCollator(settings)
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        for samples in batches:
            collator(samples)
        best = min(best, time.perf_counter() - t0)
    return {"seconds": best, "batches": len(batches)}


def serve(fixtures: str, prompts_path: str, frames: str) -> dict:
    """HiggsAudioServeEngine.generate on each prompt (messages as ChatML), after one warm-up: seconds and audio."""
    import torch
    from boson_multimodal.data_types import AudioContent, ChatMLSample, Message
    from boson_multimodal.serve.serve_engine import HiggsAudioServeEngine

    fx = Path(fixtures)
    engine = HiggsAudioServeEngine(str(fx / "model"), str(fx / "audio_tokenizer"), str(fx / "tokenizer"),
                                   device="cpu", torch_dtype=torch.float32)
    prompts = json.loads(Path(prompts_path).read_text())

    def run(messages):
        chat = [Message(role=m["role"], content=AudioContent(audio_url=m["content"]["audio_url"])
                        if isinstance(m["content"], dict) else m["content"]) for m in messages]
        out = engine.generate(ChatMLSample(messages=chat), max_new_tokens=int(frames), seed=0, force_audio_gen=True)
        return len(out.audio) / out.sampling_rate

    run(prompts[0])
    seconds = audio = 0.0
    for messages in prompts:
        t0 = time.perf_counter()
        audio += run(messages)
        seconds += time.perf_counter() - t0
    return {"seconds": seconds, "audio_seconds": audio}


if __name__ == "__main__":
    from higgs_ds.fixtures import offline_env

    command, *rest = sys.argv[1:]
    if command == "serve":
        os.environ.update(offline_env(rest[0]))
    print(json.dumps({"collate": collate, "serve": serve}[command](*rest)))
