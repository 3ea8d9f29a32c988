"""`make wheelhouse`: what bench/gpu_check.sh needs on a machine that has torch and torchaudio 2.11 and no package
registry: every other wheel training and export import, pinned to the versions of this checkout's venv, and the
small data the smoke run trains on (the fixture text tokenizer and a shard set built here with it).

    python -m bench.wheelhouse --out wheelhouse --python-version 3.12   # the lent GPU machines' Python

The wheels' dependency closure is read from the venv's installed metadata, less torch, torchaudio and what they
bring themselves. Training reads its token ids from the shards: neither boson's collator nor its ChatML dataset
(pandas, librosa) is imported. Listening and scoring (resemblyzer, speechmos, onnxruntime, the audio tokenizer's
codec stack) are left out: they do not fit in the size limit and the check does not listen.
"""

from __future__ import annotations

import argparse
import importlib.metadata as md

from packaging.requirements import Requirement
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOTS = ["transformers", "peft", "deepspeed", "webdataset", "submitit", "boson-multimodal", "pyyaml", "numpy",
         "omegaconf", "dacite", "loguru", "soundfile", "tqdm", "huggingface-hub", "safetensors", "tokenizers"]
WITHOUT_DEPS: list[str] = []  # installed without their own dependencies
TORCH_SIDE = {"torch", "torchaudio", "filelock", "typing-extensions", "sympy", "networkx", "jinja2", "fsspec",
              "setuptools", "mpmath", "markupsafe", "triton"}
NOT_ON_LINUX = {"colorama", "win32-setctime", "aiocontextvars", "dataclasses"}
NOT_OFFLINE = {"hf-xet"}  # huggingface_hub's download accelerator: the check downloads nothing
SDIST_ONLY = {"deepspeed"}  # built into a wheel here (pure Python; no ops are compiled at install)
LIMIT_MIB = 60
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64", "manylinux_2_24_x86_64"]


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def closure() -> dict[str, str]:
    """name -> version of ROOTS and what they require (non-extra), as installed in this venv, less the torch side."""
    pins, stack = {}, list(ROOTS)
    while stack:
        name = canonical(stack.pop())
        if name in pins or name in TORCH_SIDE or name in NOT_ON_LINUX or name in NOT_OFFLINE or name.startswith(("nvidia-", "cuda-")):
            continue
        dist = md.distribution(name)
        pins[name] = dist.version
        if name == "boson-multimodal":
            continue  # its own pins would replace torch; what it imports is among ROOTS
        stack += [req.name for req in map(Requirement, dist.requires or [])
                   if req.marker is None or req.marker.evaluate({"extra": ""})]  # what this Python installs
    for name in WITHOUT_DEPS:
        pins[name] = md.distribution(name).version
    return pins


def download(pins: dict[str, str], out: Path, python_version: str) -> None:
    wanted = [f"{n}=={v}" for n, v in sorted(pins.items()) if n not in SDIST_ONLY]
    platform = [a for p in PLATFORMS for a in ("--platform", p)]
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check", "--no-deps",
                    "--only-binary=:all:", "--python-version", python_version, "--implementation", "cp", *platform,
                    "-d", str(out), *wanted], check=True)
    for name in sorted(SDIST_ONLY & set(pins)):  # torch is already here, so no isolated build env pulls another
        subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--disable-pip-version-check", "--no-deps",
                        "--no-build-isolation", "-w", str(out), f"{name}=={pins[name]}"], check=True)


def smoke_data(out: Path) -> None:
    """The fixture text tokenizer and a small shard set tokenized with it: the real-size v2 model is built on the
    GPU machine around this tokenizer's special-token ids (higgs_ds.fixtures.build_full_size_model). v3-train: the
    same speech in Higgs TTS 3's prompt, with the tokenizer build_v3_model writes beside the model it builds."""
    from bench.common import WORK, fixtures, replicated_chatml, speech
    from bench.loader import build_set
    from higgs_ds.data.shards import BuildConfig, build_shards

    fx = fixtures()
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(fx / "tokenizer", out / "tokenizer")
    shutil.copytree(build_set(fx, speech()), out / "train", ignore=shutil.ignore_patterns("parts"))
    build_shards(BuildConfig(input=str(replicated_chatml(speech(), copies=2)), out=str(out / "v3-train"),
                             audio_tokenizer=str(fx / "audio_tokenizer"), text_tokenizer=str(fx / "v3_model"),
                             shard_size=100, cache_dir=str(WORK / "code-cache")))
    shutil.rmtree(out / "v3-train" / "parts", ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="wheelhouse")
    p.add_argument("--python-version", default="3.12", help="of the machine the check runs on")
    args = p.parse_args(argv)
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    pins = closure()
    download(pins, out, args.python_version)
    names = sorted(f.name for f in out.glob("*.whl"))
    (out / "requirements.txt").write_text("".join(f"{n}=={v}\n" for n, v in sorted(pins.items())))
    smoke_data(out / "smoke")
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"{out}: {len(names)} wheels and the smoke data, {size / 2**20:.1f} MiB (limit {LIMIT_MIB} MiB)")
    if size > LIMIT_MIB * 2**20:
        print(f"{out} is over {LIMIT_MIB} MiB: it cannot travel beside the checkout", file=sys.stderr)
        return 1
    (out / "wheelhouse.json").write_text(json.dumps({"python_version": args.python_version, "wheels": names,
                                                     "bytes": size}, indent=1))  # written last: it marks a whole one
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
