#!/usr/bin/env bash
# The GPU check, from the repository root of the GPU machine (the kit carried in .gpu-kit/):
#   bash tools/gpu_check/run.sh [--budget-s 480] [--models a,b] [--out DIR]
# Installs the carried wheels into a private folder, runs every phase within the budget and
# writes results.json + report.md into $OUT (or var/gpu-check/<time>). See docs/gpu.md.
set -uo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-$(command -v python3 || command -v python)}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
# The budget inside is 480 s; this outer limit only catches a hang (SIGTERM lets the run stop its children).
exec timeout --kill-after=15 "${GPU_CHECK_TIMEOUT_S:-540}" "$PY" -m tools.gpu_check "$@"
