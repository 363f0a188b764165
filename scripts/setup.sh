#!/usr/bin/env bash
# Sets up a fresh machine: a virtual environment with the CPU build of torch and
# everything the package, its tests and benchmarks need, then builds sdu_ext.
#   VENV     where to create it (default .venv)
#   TORCH    torch requirement (default torch==2.13.0, the small CPU build; use
#            torch==2.14.1 for the CUDA 13 build on a GPU machine)
# Build variables (FORCE_CUDA, CUDA_HOME, TORCH_CUDA_ARCH_LIST) pass through to setup.py.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
TORCH=${TORCH:-torch==2.13.0}
PY=${PYTHON:-python3}

[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip setuptools wheel
"$VENV/bin/python" -m pip install -q "$TORCH"
"$VENV/bin/python" -m pip install -q ninja numpy scipy tqdm matplotlib pytest expecttest \
  scikit-learn scikit-image
# optional extra: the cooper adapter (sdu_ext.integrations.cooper) and its test
"$VENV/bin/python" -m pip install -q "cooper-optim>=1.0"
"$VENV/bin/python" -m pip install -q --no-build-isolation -e .
"$VENV/bin/python" -c "import sdu_ext, json; print(json.dumps(sdu_ext.build_info()))"
