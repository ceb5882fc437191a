#!/usr/bin/env bash
# GPU check (issue 7): training epochs/s, feature extraction images/s and FAISS search queries/s, GPU against CPU for the
# same work; prints a table and writes bench/out/gpu_check.json (--out, --doc PAGE, --from-json); without a GPU it runs the
# CPU side only and says so.
#   bench/gpu_check.sh [--quick] [--cpu-only] [--out PATH]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON="${PYTHON:-}"
if [[ -z "$PYTHON" ]]; then
  if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || echo "nvidia-smi found but it reports no usable GPU"
else
  echo "nvidia-smi not found: no NVIDIA driver on this host (the check runs on the CPU only)"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec "$PYTHON" bench/gpu_check.py "$@"
