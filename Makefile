# The two commands of the README: `make up` (run the system) and `make test` (CI).
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build, pinned in the same pip command so nothing pulls multi-GB CUDA wheels.
# On a GPU machine: make TORCH=torch (or the CUDA build you already use).
TORCH ?= torch==2.13.0
STAMP := $(VENV)/.sllm-installed
INSTALL_INPUTS := pyproject.toml $(wildcard setup.py) \
	$(wildcard libs/loader/csrc/*.cpp libs/loader/csrc/*.hpp)
PYTEST_ARGS ?=
# e.g. make bench-throughput THROUGHPUT_ARGS=--quick
THROUGHPUT_ARGS ?=
# e.g. make bench-scale SCALE_ARGS="--workers 300 --rates 25,50,100,200" (or --quick)
SCALE_ARGS ?=

.PHONY: install browser test check lint format typecheck pytest chaos soak up bench bench-loader bench-serving bench-trace bench-migration bench-throughput bench-ha bench-scale bench-sim bench-adapters multihost clean help

help:
	@echo "make up           install if needed, then run the whole system (Ctrl-C stops it)"
	@echo "make test         install if needed, then format check, lint, types and all tests"
	@echo "make chaos        the fault tests (tests/chaos) with more rounds than CI"
	@echo "make soak         10 minutes of mixed traffic with a fault every minute"
	@echo "make multihost    3 hosts as network namespaces: a host cut off mid-stream (root)"
	@echo "make bench-loader checkpoint loading benchmark (one table)"
	@echo "make bench-serving time to first token: warm, cold from DRAM/SSD/registry, baseline"
	@echo "make bench-trace   bursty many-model trace: our placement vs round-robin"
	@echo "make bench-migration  live-migration pause vs context length, vs a KV-cache transfer"
	@echo "make bench-throughput tokens/s, TTFT, ITL vs concurrency: sllm vs transformers serve"
	@echo "make bench-ha      streamed load through a NATS server loss and a Valkey failover (--ha)"
	@echo "make bench-scale   the real control plane with 100-1,000 hollow workers, rising request rates"
	@echo "make bench-sim     cluster simulator on the real policies: sllm vs Ray Serve / KServe"
	@echo "make bench-adapters LoRA adapters: TTFT resident/DRAM/SSD vs a merged-model cold start, mixed tokens/s"
	@echo "make format       reformat the code"

# A second run skips the install unless pyproject.toml, setup.py or the native sources changed.
$(STAMP): $(INSTALL_INPUTS)
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --disable-pip-version-check -q "$(TORCH)" -e ".[test]"
	@touch $@

install: $(STAMP)

lint: install
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .

typecheck: install
	$(BIN)/mypy

pytest: install browser
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The status page's browser test (tests/e2e/test_status_page.py) drives the system Chromium:
# installed here when missing, as root with apt-get; where it cannot be, that test skips.
browser:
	@if { [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; } && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing chromium and chromium-driver (the status page test)"; \
		{ apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
			--no-install-recommends chromium chromium-driver >/dev/null; } \
			|| echo "chromium not installed: the status page test will skip"; \
	fi

check: lint typecheck pytest

test: check

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

up: install
	$(BIN)/sllm up

# The fault tests of tests/chaos with more rounds than CI's one (make chaos CHAOS_ROUNDS=20).
CHAOS_ROUNDS ?= 5
chaos: install
	SLLM_CHAOS_ROUNDS=$(CHAOS_ROUNDS) $(BIN)/python -m pytest -m chaos tests/chaos $(PYTEST_ARGS)

# Minutes of mixed traffic with a kill -9 every minute: lost/wrong requests and RSS per service.
SOAK_ARGS ?=
soak: install
	$(BIN)/python -m benchmarks.soak $(SOAK_ARGS)

# Three hosts as network namespaces (root): a host cut off mid-stream fails over and rejoins.
multihost: install
	$(BIN)/python -m pytest -m multihost -v tests/e2e/test_multihost.py

bench-loader: install
	$(BIN)/python -m pip install --disable-pip-version-check -q "$(TORCH)" -e ".[test,bench]"
	$(BIN)/python -m benchmarks.bench_loader

bench-serving: install
	$(BIN)/python -m benchmarks.bench_serving

# peft (writes the adapters) and matplotlib come with the test extra that install installs.
bench-adapters: install
	$(BIN)/python -m benchmarks.bench_adapters

bench-trace: install
	$(BIN)/python -m benchmarks.bench_trace

bench-migration: install
	$(BIN)/python -m benchmarks.bench_migration

bench-throughput: install
	$(BIN)/python -m pip install --disable-pip-version-check -q "$(TORCH)" -e ".[test,bench]"
	$(BIN)/python -m benchmarks.bench_throughput $(THROUGHPUT_ARGS)

bench: bench-loader bench-serving bench-trace bench-migration bench-throughput

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .ruff_cache .pytest_cache

bench-ha: install
	$(BIN)/python -m pip install --disable-pip-version-check -q "$(TORCH)" -e ".[test,bench]"
	$(BIN)/python -m benchmarks.bench_ha $(HA_ARGS)

bench-scale: install
	$(BIN)/python -m benchmarks.bench_scale $(SCALE_ARGS)

# The discrete-event simulator on the real policies (default: the 4 x 4 GPU testbed preset).
# e.g. make bench-sim SIM_ARGS="--preset 1000x8 --workload gamma --rates 100"
SIM_ARGS ?=
bench-sim: install
	$(BIN)/python -m pip install --disable-pip-version-check -q "$(TORCH)" -e ".[test,bench]"
	$(BIN)/python -m benchmarks.simulator $(SIM_ARGS)
