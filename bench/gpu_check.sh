#!/usr/bin/env bash
# The GPU check, offline: a venv that reuses this machine's torch and torchaudio 2.11, the rest installed from the
# wheelhouse (`make wheelhouse`) with no index, then bench/gpu_check.py (the real-size smoke and bench.gpu).
#
#   bench/gpu_check.sh                      # on a GPU machine: writes gpu-check/gpu_check.json, prints a table
#   bench/gpu_check.sh --device cpu         # the same steps on the tiny model (what the CPU test runs)
#
# PYTHON (default python3) must import torch 2.11; WHEELHOUSE (default ./wheelhouse), VENV (default
# /tmp/higgs-ds-gpu-check) may be set. Every other argument goes to bench/gpu_check.py.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
python="${PYTHON:-python3}"
wheelhouse="$(cd "${WHEELHOUSE:-$repo/wheelhouse}" && pwd)"
venv="${VENV:-/tmp/higgs-ds-gpu-check}"

torch_site="$("$python" -c 'import os, torch; print(os.path.dirname(os.path.dirname(torch.__file__)))')" || {
  echo "$python cannot import torch: set PYTHON to the interpreter that has torch 2.11" >&2; exit 2; }
"$python" -c 'import torch, sys; sys.exit(0 if torch.__version__.startswith("2.11") else 1)' || {
  echo "$python has torch $("$python" -c 'import torch; print(torch.__version__)'), the wheelhouse is for 2.11" >&2; exit 2; }

t0=$(date +%s)
rm -rf "$venv"
# the venv's pip comes from ensurepip's bundled wheel (offline); without ensurepip, the torch interpreter's pip serves
"$python" -m venv "$venv" 2>/dev/null || { rm -rf "$venv"; "$python" -m venv --without-pip "$venv"; }
site="$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
echo "$torch_site" > "$site/higgs-ds-torch.pth"  # after the venv's own packages: the wheelhouse's versions win
"$venv/bin/python" -m pip install -q --disable-pip-version-check --no-index --no-deps --ignore-installed --no-compile \
  --no-cache-dir --find-links "$wheelhouse" -r "$wheelhouse/requirements.txt"
echo "installed $(wc -l < "$wheelhouse/requirements.txt") packages from $wheelhouse in $(( $(date +%s) - t0 )) s"
cd "$repo"
exec "$venv/bin/python" -m bench.gpu_check --wheelhouse "$wheelhouse" "$@"
