#!/usr/bin/env bash
# Create .venv with everything the headless command and the tests need, and install this project into it
# (editable, so `import ursa_core` and the `ursa` command work from any folder). Safe to run again.
# torch is installed first and pinned to 2.13.0 so pip never picks a (CUDA) torch of its own.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${URSA_VENV:-.venv}
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
PY="$VENV/bin/python"
"$PY" -m pip install -q --upgrade pip
"$PY" -c "import torch" 2>/dev/null || "$PY" -m pip install -q torch==2.13.0
# setuptools: the build backend, also for the offline wheel test (pip wheel --no-build-isolation). triton: the fused
# kernels' tests run their source on the CPU through Triton's interpreter (tests/test_fused_ops.py); the version the
# GPU machines have. It brings no torch of its own. peft: the LoRA tests compare against PEFT's own merge (its torch
# requirement is met by the torch above, so pip keeps that one).
"$PY" -m pip install -q -r requirements.txt pytest pytest-mock "setuptools>=77" "triton==3.6.0; platform_system == 'Linux'" \
    "peft>=0.13"
"$PY" -m pip install -q --no-build-isolation --no-deps -e .
echo "setup done: $("$PY" -c 'import torch, ursa_core; print("torch", torch.__version__, "| ursa", ursa_core.__version__)')"
