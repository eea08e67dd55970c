#!/usr/bin/env bash
# `make e2e`: run docker/e2e.py against the image `make image` built, with the
# engine flags of docker/podman.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
source docker/podman.sh
command -v "$ENGINE" >/dev/null || { echo "e2e: $ENGINE is not installed (tools/apt-packages.txt)" >&2; exit 1; }
"${ENGINE_CMD[@]}" image exists "$IMAGE" || { echo "e2e: no image $IMAGE; run 'make image'" >&2; exit 1; }
export VISIONMESH_ENGINE="${ENGINE_CMD[*]}" VISIONMESH_ULIMITS="${ULIMITS[*]}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec .venv/bin/python docker/e2e.py --image "$IMAGE" "$@"
