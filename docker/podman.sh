# Sourced by docker/build.sh and docker/e2e.sh: the container engine and the flags it needs.
# Podman runs rootful without systemd here: runc (crun needs a unified cgroup tree),
# vfs storage, cgroupfs, file events. ENGINE=docker uses a Docker engine instead.
# shellcheck shell=bash
ENGINE=${ENGINE:-podman}
if [[ "$ENGINE" == podman ]]; then
  ENGINE_CMD=(podman --runtime runc --storage-driver vfs --cgroup-manager cgroupfs --events-backend file)
else
  ENGINE_CMD=("$ENGINE")
fi
# Docker image format: OCI drops SHELL and HEALTHCHECK. No intermediate layers: on
# vfs storage every committed step is a full copy of the root (a few builds filled
# 60 GB); the base image is what is worth caching, and it is (docker/build.sh).
FORMAT_ARGS=()
[[ "$ENGINE" == podman ]] && FORMAT_ARGS=(--format docker --layers=false)
# Explicit limits: the engine's defaults exceed what this host's user limits allow.
ULIMITS=(--ulimit nofile=1024:1024 --ulimit nproc=1000:1000)
VERSION=$(sed -n 's/^version = "\(.*\)"$/\1/p' pyproject.toml | head -1)
IMAGE=${IMAGE:-visionmesh/visionmesh-cpu:$VERSION}
BASE_IMAGE=${BASE_IMAGE:-localhost/visionmesh-base:bookworm}
