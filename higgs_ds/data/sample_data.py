"""Real speech for tests and the demo, spoken by espeak-ng (several voices = several speakers), plus manifests."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

from higgs_ds.data.chatml import DEFAULT_SYSTEM_PROMPT, Utterance, cloning_messages

VOICES = ["en-us+m3", "en-us+f3", "en-gb+m1", "en-us+f4", "en-gb-scotland+m2", "en-029+f2", "en-gb-x-rp+m4",
          "en-us+f1"]
SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "She sells sea shells by the sea shore.",
    "A journey of a thousand miles begins with a single step.",
    "Every morning the train leaves the station at seven.",
    "Please call Stella and ask her to bring these things with her.",
    "The weather today is sunny with a light breeze from the west.",
    "Numbers like one, two and three are easy to say.",
    "He read the letter twice before putting it away.",
    "Bright lights shone over the quiet harbour at night.",
    "Our meeting starts after lunch in the small room.",
    "They planted tomatoes and beans in the garden.",
    "Music filled the hall as the audience took their seats.",
]


def require_espeak() -> str:
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise RuntimeError("espeak-ng is not installed; install it with `apt-get install espeak-ng` (Debian/Ubuntu) "
                           "or `brew install espeak-ng` (macOS), or run `make deps` as root")
    return exe


def speak(text: str, voice: str, out: Path, speed: int = 160) -> None:
    subprocess.run([require_espeak(), "-v", voice, "-s", str(speed), "-w", str(out), text], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def make_sample_data(out: str | Path, speakers: int = 3, utterances: int = 4, refs_per_target: int = 1) -> dict:
    """Write DIR/wavs/*.wav, DIR/utterances.jsonl and DIR/chatml.jsonl (paths relative to the manifests)."""
    if not 1 <= speakers <= len(VOICES):
        raise ValueError(f"--speakers must be in [1, {len(VOICES)}], got {speakers}")
    out = Path(out)
    (out / "wavs").mkdir(parents=True, exist_ok=True)
    utts = []
    for s in range(speakers):
        for u in range(utterances):
            text = SENTENCES[(s * 5 + u) % len(SENTENCES)]
            rel = f"wavs/spk{s}_{u:03d}.wav"
            speak(text, VOICES[s], out / rel, speed=150 + 10 * (u % 3))
            utts.append({"audio": rel, "text": text, "speaker": f"spk{s}"})
    with open(out / "utterances.jsonl", "w") as f:
        for u in utts:
            f.write(json.dumps(u) + "\n")
    with open(out / "chatml.jsonl", "w") as f:
        for i, u in enumerate(utts):
            same = [v for v in utts if v["speaker"] == u["speaker"] and v is not u]
            refs = same[i % len(same):][:refs_per_target] if same else []
            as_utt = [Utterance(0, "", v["audio"], v["text"], v["speaker"]) for v in refs + [u]]
            messages = cloning_messages(as_utt[:-1], as_utt[-1], DEFAULT_SYSTEM_PROMPT)
            f.write(json.dumps({"messages": messages, "speaker": u["speaker"],
                                "start_index": len(messages) - 1}) + "\n")
    return {"utterances": str(out / "utterances.jsonl"), "chatml": str(out / "chatml.jsonl"), "files": len(utts)}
