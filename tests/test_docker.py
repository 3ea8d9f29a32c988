"""The Docker image definition (no Docker engine runs here): it parses, pins what the project pins, copies what
exists, runs as a non-root user with no entrypoint, and the commands it is used with exist."""

import re
import shutil
import sys
from pathlib import Path

import tomllib

from tests.helpers import REPO

INSTRUCTIONS = {"FROM", "RUN", "COPY", "ADD", "WORKDIR", "ENV", "USER", "ARG", "LABEL", "EXPOSE", "CMD",
                "ENTRYPOINT", "VOLUME", "SHELL", "HEALTHCHECK", "STOPSIGNAL", "ONBUILD"}


def instructions():
    text = (REPO / "docker" / "Dockerfile").read_text()
    logical = re.sub(r"\\\n", " ", text)
    out = []
    for line in logical.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word, rest))
    return out


def test_dockerfile_parses_and_runs_as_non_root_without_entrypoint():
    ins = instructions()
    assert ins[0][0] == "FROM"
    assert all(word in INSTRUCTIONS for word, _ in ins), [w for w, _ in ins if w not in INSTRUCTIONS]
    assert not any(word in ("ENTRYPOINT", "CMD") for word, _ in ins)
    users = [rest for word, rest in ins if word == "USER"]
    assert users and users[-1] not in ("root", "0")
    for word, rest in ins:
        if word == "COPY":
            for src in rest.split()[:-1]:
                assert (REPO / src).exists(), f"COPY {src}: not in the repo"


def test_dockerfile_pins_equal_the_project_pins():
    pins = {}
    for word, rest in instructions():
        if word == "RUN":
            pins.update(dict(re.findall(r"([A-Za-z0-9_.-]+)==([0-9][^\s]*)", rest)))
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    project_pins = dict(re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)$", "\n".join(project), re.M))
    makefile = dict(re.findall(r"([A-Za-z0-9_.-]+)==([0-9][^\s]*)", (REPO / "Makefile").read_text()))
    assert pins, "no pinned packages found in the Dockerfile"
    for name, version in pins.items():
        assert project_pins.get(name, makefile.get(name)) == version, f"{name}=={version} differs from the project"
    assert makefile["boson-multimodal"] == pins["boson-multimodal"]


def test_the_commands_used_in_the_image_exist():
    bin_dir = Path(sys.executable).parent
    for exe in ("higgs-ds", "deepspeed", "torchrun"):
        assert (bin_dir / exe).exists() or shutil.which(exe), exe
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["higgs-ds"] == "higgs_ds.cli:console"
    assert (REPO / "higgs_ds" / "train.py").is_file() and (REPO / "launcher" / "submit.py").is_file()
    ignored = (REPO / ".dockerignore").read_text().split()
    assert ".venv" in ignored and ".cache" in ignored
