#!/usr/bin/env bash
# The GPU table of benchmarks/gpu.py on one CUDA device, stopped after 5 minutes whatever happens.
# Usage: bash benchmarks/gpu.sh [--dry]     (PYTHON=... to pick the interpreter; default: python)
set -euo pipefail
cd "$(dirname "$0")"
exec timeout 300 "${PYTHON:-python}" gpu.py "$@"
