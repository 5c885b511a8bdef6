#!/usr/bin/env bash
# Create .venv with everything the headless command and the tests need.
# torch is installed first and pinned to 2.13.0 so pip never picks a (CUDA) torch of its own.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${URSA_VENV:-.venv}
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
PY="$VENV/bin/python"
"$PY" -m pip install -q --upgrade pip
"$PY" -c "import torch" 2>/dev/null || "$PY" -m pip install -q torch==2.13.0
"$PY" -m pip install -q -r requirements.txt pytest pytest-mock
echo "setup done: $("$PY" -c 'import torch, transformers; print("torch", torch.__version__, "| transformers", transformers.__version__)')"
