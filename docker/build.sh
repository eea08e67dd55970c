#!/usr/bin/env bash
# `make image`: build visionmesh/visionmesh-cpu:<version> from docker/Dockerfile.cpu.
# 1. A Debian bookworm base (python3, venv, CA certificates) made with mmdebstrap and
#    imported once; no registry is needed. Remove it to rebuild: podman rmi $BASE_IMAGE.
# 2. A build context with the sources, the model repository `make models` built
#    (dereferenced: model_repository may be a link) and the wheels built here.
# 3. The build, on the host network, with the host's CA bundle for pip.
set -euo pipefail
cd "$(dirname "$0")/.."
source docker/podman.sh
command -v "$ENGINE" >/dev/null || { echo "image: $ENGINE is not installed (tools/apt-packages.txt)" >&2; exit 1; }
compgen -G "model_repository/*/*/model.onnx" >/dev/null || { echo "image: run 'make models' first" >&2; exit 1; }
work=var/image
mkdir -p "$work"

if ! "${ENGINE_CMD[@]}" image exists "$BASE_IMAGE" 2>/dev/null; then
  echo "image: building the base $BASE_IMAGE with mmdebstrap"
  rm -f "$work/base.tar"
  mmdebstrap --quiet --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$work/base.tar"
  "${ENGINE_CMD[@]}" import "$work/base.tar" "$BASE_IMAGE"
  rm -f "$work/base.tar"
fi

context="$work/context"
rm -rf "$context" && mkdir -p "$context"
git ls-files -z --cached --others --exclude-standard -- \
    requirements.txt pyproject.toml protos visionmesh services gateway docker \
  | tar --null -T - -cf - | tar -xf - -C "$context"
cp -rL model_repository "$context/model_repository"
# pdqhash has no binary wheel on PyPI: build it here (g++, tools/apt-packages.txt), the same
# Debian release as the image, so the image needs no compiler.
mkdir -p "$context/wheels"
pdq_pin=$(grep -E '^pdqhash==' requirements.txt)
.venv/bin/pip wheel --quiet --no-deps --wheel-dir "$context/wheels" "$pdq_pin"

ca=${PIP_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
ca_args=()
[[ -f "$ca" ]] && ca_args=(--volume "$(realpath "$ca"):/run/pip-ca.crt:ro" --build-arg PIP_CERT=/run/pip-ca.crt)
start=$(date +%s)
rm -f "$work/iid"
"${ENGINE_CMD[@]}" build --network host ${FORMAT_ARGS[@]+"${FORMAT_ARGS[@]}"} "${ULIMITS[@]}" "${ca_args[@]}" \
  --iidfile "$work/iid" --build-arg "BASE_IMAGE=$BASE_IMAGE" \
  -f "$context/docker/Dockerfile.cpu" -t "$IMAGE" "$context" &
build=$!
# Podman 4.3 on vfs storage can hang after committing the image, while it removes the
# intermediate containers. The image is complete once its id is written: allow the
# clean-up a minute, then stop the build process (the next podman call finishes it).
while kill -0 "$build" 2>/dev/null; do
  if [[ -s "$work/iid" ]]; then
    for _ in $(seq 60); do kill -0 "$build" 2>/dev/null || break; sleep 1; done
    kill "$build" 2>/dev/null || true
    break
  fi
  sleep 2
done
wait "$build" || [[ -s "$work/iid" ]] || { echo "image: build failed" >&2; exit 1; }
echo "image: built $IMAGE ($(cat "$work/iid" | cut -c1-19)) in $(( $(date +%s) - start )) s;" \
  "size $("${ENGINE_CMD[@]}" image inspect --format '{{.Size}}' "$IMAGE" | awk '{printf "%.0f MB", $1/1e6}')"
# Earlier builds' layers are untagged now; vfs keeps full copies of each, so drop them.
"${ENGINE_CMD[@]}" image prune --force >/dev/null || true
