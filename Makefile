# Set-up and entry points. `make demo` and `make test` do all set-up on a fresh machine.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
STAMP  := $(VENV)/.higgs-ds-installed
# boson_multimodal's model (the oracle the tests check ours against) imports under transformers < 4.48 only: a
# second venv for the tests that run it. A .pth line puts the first venv's site-packages after its own, so it reuses
# that torch (2 GB) and installs only what transformers 4.46 and peft 0.17 need.
BOSON_VENV  := .venv-boson
BOSON_STAMP := $(BOSON_VENV)/.higgs-ds-installed
BOSON_PKGS  := transformers==4.46.3 peft==0.17.1
# mlx-audio's Higgs TTS 3 model: the independent implementation the v3 tests check ours against (MIT, CPU build of
# mlx). Its own venv: mlx-audio pins what its other models need; the v3 model imports mlx and numpy only.
MLX_VENV  := .venv-mlx
MLX_STAMP := $(MLX_VENV)/.higgs-ds-installed
MLX_PKGS  := mlx[cpu]==0.32.4 numpy==2.4.6 huggingface_hub==2.4.0
DEMO   ?= demo
PYTEST_ARGS ?=
# The GPU check's wheels (bench/gpu_check.sh): WHEEL_PY is the Python of the machine it runs on. The test copy is for
# this machine's Python and is what tests/test_gpu_check.py installs from, offline.
WHEEL_PY ?= 3.12
TEST_WHEELHOUSE := .cache/wheelhouse-test

# set-up steps run side by side (the venvs, Debian packages, the wheelhouse): on a fresh machine they wait on the
# network and on dpkg more than on the CPU
MAKEFLAGS += --jobs=3

.PHONY: help venv boson-venv mlx-venv deps slurm-debs lint test test-fast demo bench wheelhouse test-wheelhouse clean

help:
	@echo "make demo   - fixtures + espeak-ng speech + shards + 2-rank DeepSpeed LoRA run + adapter export (CPU)"
	@echo "make test   - the whole test suite (unit, multi-process DeepSpeed, local SLURM when root)"
	@echo "make bench  - benchmarks, printed as ratios against baselines measured in the same run"
	@echo "make wheelhouse - wheels + smoke data for bench/gpu_check.sh on a GPU machine without a registry"

# torch is pinned in the same pip call as deepspeed (else deepspeed pulls another torch build);
# boson-multimodal is installed with --no-deps (its own pins replace torch); pyproject lists what it imports.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --disable-pip-version-check -e '.[dev]'
	$(PIP) install -q --disable-pip-version-check --no-deps boson-multimodal==0.1.1 resemblyzer==0.1.4
	touch $@

venv: $(STAMP)

$(BOSON_STAMP): $(STAMP) Makefile
	test -x $(BOSON_VENV)/bin/python || $(PYTHON) -m venv $(BOSON_VENV)
	$(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])' > \
	  "$$($(BOSON_VENV)/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/higgs-ds-base.pth"
	$(BOSON_VENV)/bin/pip install -q --disable-pip-version-check $(BOSON_PKGS)
	touch $@

boson-venv: $(BOSON_STAMP)

$(MLX_STAMP): Makefile
	test -x $(MLX_VENV)/bin/python || $(PYTHON) -m venv $(MLX_VENV)
	$(MLX_VENV)/bin/pip install -q --disable-pip-version-check $(MLX_PKGS)
	$(MLX_VENV)/bin/pip install -q --disable-pip-version-check --no-deps mlx-audio==0.6.2
	touch $@

mlx-venv: $(MLX_STAMP)

# Debian packages: espeak-ng (speech for tests and the demo), ffmpeg (mp3/flac/ogg/opus test corpora), chromium
# (report.html in a real headless browser). Installed only when running as root and missing.
DEBS := espeak-ng:espeak-ng ffmpeg:ffmpeg chromium:chromium
deps:
	@missing=""; for d in $(DEBS); do command -v $${d%%:*} >/dev/null 2>&1 || missing="$$missing $${d##*:}"; done; \
	if [ -z "$$missing" ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "installing$$missing"; apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	  apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	else echo "missing Debian packages:$$missing; install them (apt-get install$$missing) and re-run"; exit 1; fi

# the local SLURM cluster's packages (tests/runs/test_slurm.py), installed with the set-up rather than by the first
# SLURM test; after `deps`: one apt-get at a time
slurm-debs: deps
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then bash tests/runs/cluster.sh install; fi

lint: venv
	$(PY) -m pyflakes higgs_ds launcher bench tests

$(TEST_WHEELHOUSE)/wheelhouse.json: $(STAMP) bench/wheelhouse.py higgs_ds/fixtures.py | deps  # its smoke data: fixtures, speech
	$(PY) -m bench.wheelhouse --out $(TEST_WHEELHOUSE) \
	  --python-version "$$($(PY) -c 'import sys; print("%d.%d" % sys.version_info[:2])')"

test-wheelhouse: $(TEST_WHEELHOUSE)/wheelhouse.json

# two sessions: the product venv, then the oracle tests (boson_multimodal's model in its venv, ours beside it). Side
# by side they took longer (46 min against 44.5 on 2 cores): the product session's tests slowed by more than the
# oracle's 4 minutes.
test: venv boson-venv mlx-venv deps slurm-debs lint test-wheelhouse
	status=0; $(VENV)/bin/pytest -q -rs -m "not oracle" $(PYTEST_ARGS) tests || status=1; \
	$(BOSON_VENV)/bin/python -m pytest -q -rs -m oracle $(PYTEST_ARGS) tests || status=1; exit $$status

test-fast: venv boson-venv mlx-venv deps test-wheelhouse
	status=0; $(VENV)/bin/pytest -q -rs -m "not slow and not slurm and not oracle" $(PYTEST_ARGS) tests || status=1; \
	$(BOSON_VENV)/bin/python -m pytest -q -rs -m "oracle and not slow" $(PYTEST_ARGS) tests || status=1; exit $$status

demo: venv deps
	$(PY) -m higgs_ds.demo --out $(DEMO)

bench: venv boson-venv deps
	$(PY) -m bench.run

wheelhouse: venv deps
	$(PY) -m bench.wheelhouse --out wheelhouse --python-version $(WHEEL_PY)

clean:
	rm -rf .cache $(DEMO) .pytest_cache $(BOSON_VENV) $(MLX_VENV) wheelhouse gpu-check
