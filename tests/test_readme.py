"""Every command the README and docs/ show. The README's first page (from a corpus to a served fine-tune) and its
Higgs TTS 3 section run as written on the demo's fixtures, in a scratch directory. Every other `higgs-ds` and
`higgs_ds/train.py` command parses against the real command line: its flags, and the config keys it overrides.
What is left out is named with why (`LEFT_OUT`)."""

import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO

PAGE = "From a corpus to a served fine-tune"
V3_SECTION = "Higgs TTS 3"
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
# commands shown but not parsed, by their first word, and why
LEFT_OUT = {
    "make": "make targets: `make demo` and `make test` are what CI runs",
    "hf": "downloads from the hub (no hub here)",
    "sbatch": "SLURM submissions: tests/runs/test_slurm.py submits them to a real local cluster",
    "docker": "container builds (no Docker engine here; tests/test_docker.py checks the Dockerfile)",
    "apptainer": "container builds (no container engine here)",
    "mkdir": "a shell built-in's work",
    "enroot": "container import (no container engine here)",
}
# the page's training run is cut to a test's length: its other settings stay as configs/higgs_v2_lora.yaml has them
# (one listening pass, at the last step: `best` is chosen by speaker similarity, as on the page)
SHORT_RUN = ("steps=4 eval_every=2 save_every=2 eval.synth_every=4 eval.num_prompts=2 eval.max_new_tokens=20 "
             "grad_accum=1 optim.warmup_steps=1 data.num_workers=1")
# the fixtures' random model never ends a clip, and boson's generate fails on such a clip past some hundred frames
# (an IndexError inside transformers' generate, reported per prompt): the page's synthesis is cut at 100 frames
SHORT_SYNTHESIS = "--max-new-tokens 100"


def bash_blocks(path: Path) -> list[tuple[str, str]]:
    """(the heading above it, its text) for every ```bash block of a Markdown file."""
    out, heading = [], ""
    for m in re.finditer(r"^(#{1,6} [^\n]*)$|^```bash\n(.*?)^```$", path.read_text(), re.M | re.S):
        if m[1]:
            heading = m[1].lstrip("# ").strip()
        else:
            out.append((heading, m[2]))
    return out


def commands(block: str) -> list[list[str]]:
    """The block's commands as argument lists: continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", block)
    return [words for line in joined.splitlines() if (words := shlex.split(line, comments=True))]


def run_script(script: str, work: Path, fixtures_dir: Path, speech: Path, tmp_path: Path) -> None:
    """SCRIPT under bash -euo pipefail in WORK: the repo's higgs_ds/, configs/ and ds_configs/, the fixtures where
    `make demo` puts them, and voices/ (one folder per speaker of espeak-ng speech)."""
    work.mkdir()
    for name in ("higgs_ds", "configs", "ds_configs"):
        (work / name).symlink_to(REPO / name)
    (work / "demo").mkdir()
    (work / "demo" / "fixtures").symlink_to(fixtures_dir)
    for line in (speech / "utterances.jsonl").read_text().splitlines():
        u = json.loads(line)
        clip = work / "voices" / u["speaker"] / Path(u["audio"]).name
        clip.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(speech / u["audio"], clip)
        clip.with_suffix(".txt").write_text(u["text"])
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "HOME": str(tmp_path),
           "XDG_CACHE_HOME": str(tmp_path / "cache"), "TOKENIZERS_PARALLELISM": "false", "LANG": "C.UTF-8"}
    proc = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=work, env=env, capture_output=True,
                          text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]


@pytest.mark.slow
def test_the_first_page_and_the_higgs_tts_3_section_run_as_written_on_the_fixtures(fixtures_dir, speech, tmp_path):
    """The page, then the Higgs TTS 3 section after it (it starts from the page's split data), in one bash script as
    a user would run them: in a scratch directory that holds the repo's higgs_ds/, configs/ and ds_configs/, the
    fixtures where `make demo` puts them, and voices/ (a corpus of one folder per speaker, made of espeak-ng speech).
    The hub-id variable blocks are left out (hub ids need a download); the fixture blocks after them take their
    place, as the page says. The v3 shard builds reuse the page's audio codes from the code cache, as a user's do."""
    page = [text for heading, text in bash_blocks(REPO / "README.md") if heading == PAGE]
    assert len(page) == 8 and "bosonai/" in page[0] and "demo/fixtures" in page[1]
    v3 = [text for heading, text in bash_blocks(REPO / "README.md") if heading == V3_SECTION]
    assert len(v3) == 3 and "bosonai/" in v3[0] and "demo/fixtures/v3_model" in v3[1]
    script = "\n".join(page[1:])
    assert script.count("run_dir=runs/voices") == 1 and script.count("--out listen/voices") == 1
    script = script.replace("run_dir=runs/voices", f"run_dir=runs/voices {SHORT_RUN}")
    script = script.replace("--out listen/voices", f"--out listen/voices {SHORT_SYNTHESIS}")
    v3_commands = v3[2]
    assert v3_commands.count("run_dir=runs/voices-v3") == 1 and v3_commands.count("--out listen/voices-v3") == 1
    # listening while it trains is tests/training/test_v3_runs.py's; here the section's own `synthesize` listens
    short = SHORT_RUN.replace("eval.synth_every=4", "eval.synth_every=0 eval.select=loss")
    v3_commands = v3_commands.replace("run_dir=runs/voices-v3", f"run_dir=runs/voices-v3 {short}")
    v3_commands = v3_commands.replace("--out listen/voices-v3", f"--out listen/voices-v3 {SHORT_SYNTHESIS}")
    work = tmp_path / "work"
    run_script("\n".join([script, v3[1], v3_commands]), work, fixtures_dir, speech, tmp_path)

    run = work / "runs" / "voices"
    assert (run / "best" / "adapter" / "adapter_config.json").is_file() and (run / "report.html").is_file()
    scores = json.loads((work / "listen" / "voices" / "scores.json").read_text())
    assert scores["prompts"] and not scores["failed"]
    native = json.loads((work / "export" / "voices" / "config.json").read_text())
    boson = json.loads((work / "export" / "voices-boson" / "config.json").read_text())
    assert (native["model_type"], boson["model_type"]) == ("higgs_audio_v2", "higgs_audio")
    assert any((work / "export" / "voices").glob("*.safetensors"))

    synthesis = json.loads((work / "listen" / "voices-v3" / "synthesis.json").read_text())
    assert synthesis["prompts"] and synthesis["generated"] == synthesis["prompts"] and not synthesis["failed"]
    merged = work / "export" / "voices-v3"
    assert json.loads((merged / "config.json").read_text())["model_type"] == "higgs_multimodal_qwen3"
    assert (merged / "LICENSE").is_file() and "Derived from Higgs TTS 3" in (merged / "NOTICE").read_text()


def test_every_other_command_parses_against_the_real_command_line():
    """Placeholders are filled where they stand for a value (`...` for the rest of a command, `[--flag X]` for
    optional parts, $VARIABLES); a command whose arguments are only placeholders is left out and counted."""
    from higgs_ds.cli import build_parser
    from higgs_ds.config import _override
    from higgs_ds.train import build_parser as train_parser

    checked, left_out, problems = 0, {}, []
    for path in DOCS:
        for heading, block in bash_blocks(path):
            if path.name == "README.md" and heading in (PAGE, V3_SECTION):
                continue  # run by the tests above
            block = re.sub(r"\s\[[^\]]*\]", "", block)  # optional parts
            for words in commands(block):
                while words and re.match(r"^[A-Z_]+=", words[0]):  # VAR=value prefixes
                    words = words[1:]
                if not words:
                    continue
                words = [w.replace("$PWD", "/work") for w in words]
                # `--flag ...` elides a value; any other `...` the rest of the command
                words = [("VALUE" if words[i - 1].startswith("-") else "...") if w == "..." else w
                         for i, w in enumerate(words)]
                tool = Path(words[0]).name
                where = f"{path.relative_to(REPO)} ({heading}): {' '.join(words)}"
                if tool in LEFT_OUT:
                    left_out.setdefault(tool, []).append(where)
                    continue
                try:
                    if tool == "higgs-ds":
                        args = [w for w in words[1:] if w != "..."]
                        build_parser().parse_args(args)
                    elif "higgs_ds/train.py" in " ".join(words):
                        at = next(i for i, w in enumerate(words) if w.endswith("higgs_ds/train.py"))
                        args = [w for w in words[at + 1:] if w != "..."]
                        parsed = train_parser().parse_args(args)
                        for item in parsed.overrides:
                            _override(item)
                    elif words[:3] == ["python", "-m", "launcher.submit"] or words[0].endswith("python") and \
                            words[1:3] == ["-m", "launcher.submit"]:
                        from launcher.submit import build_parser as submit_parser

                        submit_parser().parse_args([w for w in words[3:] if w != "..."])
                    elif tool == "gpu_check.sh":
                        from bench.gpu_check import build_parser as gpu_check_parser

                        gpu_check_parser().parse_args([w for w in words[1:] if w != "..."])
                    elif words[0].endswith("python") and words[1:3] == ["-m", "bench.gpu"]:
                        pass  # bench.gpu's own test runs it (tests/test_bench_gpu.py)
                    else:
                        problems.append(f"{where}: no rule for this command (run it, parse it, or add it to LEFT_OUT)")
                        continue
                    checked += 1
                except SystemExit:
                    problems.append(f"{where}: does not parse")
                except Exception as e:  # a config key that does not exist
                    problems.append(f"{where}: {e}")
    assert not problems, "\n".join(problems)
    assert checked >= 30, checked
    print(f"{checked} commands parsed; left out: " +
          "; ".join(f"{len(v)} {k} ({LEFT_OUT[k]})" for k, v in sorted(left_out.items())))
