# pretrade developer tasks. `make` alone lists them.
#
#   make test                    build the Cython core in place, run the tests
#   make serve                   run the gateway with a demo book (embedded
#                                redis-server unless REDIS_URL is set)
#   make test PYTEST_ARGS='-k halt -x'

PYTHON ?= python3
VENV ?= .venv
PYTEST_ARGS ?=
BENCH_ARGS ?=

BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
LOCK := .ci/constraints.txt
TOOLS := $(VENV)/.build-tools
RUNTIME := $(VENV)/.installed-runtime
UV_VERSION := 0.13.9
UV := $(VENV)/.uv/bin/uv
JOBS ?= $(shell nproc 2>/dev/null || echo 2)
CORE_PYX := $(wildcard ext/pretrade/_core/*.pyx)
# bench/'s C++ load generator, and the Debian packages it is built with.
LOADGEN_DIR := build/loadgen
LOADGEN := $(LOADGEN_DIR)/pretrade-loadgen
LOADGEN_PACKAGES := g++ pkg-config libgrpc++-dev protobuf-compiler-grpc
CXX ?= g++

.DEFAULT_GOAL := help
.PHONY: help install build runtime compile lock serve cluster test bench loadgen lint proto architecture clean

help: ## List the targets
	@echo "usage: make TARGET [PYTHON=python3] [VENV=.venv] [PYTEST_ARGS=...] [BENCH_ARGS=...]"
	@echo
	@awk 'BEGIN { FS = ":.*## " } /^[a-z]+:.*## / { printf "  %-8s %s\n", $$1, $$2 }' \
		$(MAKEFILE_LIST)

install: $(STAMP) ## Create the virtualenv and install pretrade[dev] into it (editable), as locked

# The installer is uv (from PyPI, kept in $(VENV)/.uv): it installs the locked
# dependencies in seconds where pip takes a minute. First the virtualenv with
# what compiling the core needs (Cython, setuptools), so that `make build` can
# compile while the rest installs.
$(TOOLS): $(LOCK)
	test -x "$(UV)" || $(PYTHON) -m pip install --quiet --disable-pip-version-check \
		--root-user-action=ignore --target "$(VENV)/.uv" "uv==$(UV_VERSION)"
	test -x "$(BIN)/python" || "$(UV)" venv --quiet --seed --allow-existing --python "$(PYTHON)" "$(VENV)"
	"$(UV)" pip install --quiet --python "$(BIN)/python" --constraints "$(LOCK)" cython setuptools
	touch "$@"

# The editable install does not compile the core (PRETRADE_SKIP_CORE=1):
# `make build` does, once. It builds with the virtualenv's own Cython and
# setuptools (the build tools above) instead of a throwaway copy of them.
# `make serve` needs only what serving imports ($(RUNTIME)); the tests, the
# linters and the benchmarks need the dev extras too ($(STAMP), which
# includes the runtime). Re-run whenever the dependencies, the lock or the
# build script change.
# The embedded redis-server (Redis Stack 7.4) needs OpenSSL 1.1: the last
# step fetches it into the virtualenv when the system has none
# (src/pretrade/app/redisbinaries.py).
$(RUNTIME): pyproject.toml setup.py $(TOOLS)
	PRETRADE_SKIP_CORE=1 "$(UV)" pip install --quiet --python "$(BIN)/python" \
		--no-build-isolation --constraints "$(LOCK)" -e '.[embedded]'
	"$(BIN)/python" -m pretrade.app.redisbinaries
	touch "$@"

$(STAMP): pyproject.toml setup.py $(TOOLS)
	PRETRADE_SKIP_CORE=1 "$(UV)" pip install --quiet --python "$(BIN)/python" \
		--no-build-isolation --constraints "$(LOCK)" -e '.[dev]'
	"$(BIN)/python" -m pretrade.app.redisbinaries
	touch "$(RUNTIME)" "$@"

# Installs (when needed) and compiles at the same time, on two jobs.
build: ## Install pretrade[dev], and compile the Cython core in place (PRETRADE_DEBUG=1: debug build)
	@$(MAKE) --no-print-directory -j2 $(STAMP) compile

# What `make serve` needs, the same way: the runtime dependencies and the core.
runtime:
	@$(MAKE) --no-print-directory -j2 $(RUNTIME) compile

# Cheap when nothing changed: cythonize and setuptools skip up-to-date files,
# so the in-place .so always matches the .pyx/.pxd sources. The modules
# compile in parallel (cythonize and gcc).
compile: $(TOOLS)
	"$(BIN)/python" setup.py --quiet build_ext --inplace --parallel $(JOBS)

lock: ## Re-resolve .ci/constraints.txt, the exact versions a fresh clone and CI install
	test -x "$(UV)" || $(PYTHON) -m pip install --quiet --root-user-action=ignore --target "$(VENV)/.uv" "uv==$(UV_VERSION)"
	"$(UV)" pip compile --quiet --python-version 3.11 --extra dev --extra embedded pyproject.toml -o "$(LOCK)"

# Local development: plaintext and no tokens, on the loopback address only
# (README, "Access control", says how to run it properly).
serve: runtime ## Run the gateway, demo book, audit archiver and risk desk on http://127.0.0.1:8080/
	"$(BIN)/pretrade" serve --demo --insecure --auth none --archive --desk 127.0.0.1:8080

cluster: runtime ## Run a local Redis Cluster (3+3) with 2 owning pretrade nodes and 1 standby, demo book
	"$(BIN)/pretrade" cluster

test: build ## Run the test suite, then the benchmarks once with timing off (so they cannot rot)
	"$(BIN)/python" -m pytest $(PYTEST_ARGS)
	"$(BIN)/python" -m pytest bench --benchmark-disable -q

bench: build loadgen ## Run the latency suite; writes docs/performance.md and .benchmarks/ JSON
	"$(BIN)/python" -m pytest bench --benchmark-autosave $(BENCH_ARGS)

loadgen: $(LOADGEN) ## Build bench/'s C++ load generator (as root, installs its Debian packages)

# Generated from the .proto into build/ (never committed), compiled against the
# system's gRPC C++ library. Without it: installed when root, else the command is named.
$(LOADGEN): bench/loadgen/loadgen.cc proto/pretrade/v1/risk.proto
	@if ! command -v grpc_cpp_plugin >/dev/null 2>&1 || ! command -v protoc >/dev/null 2>&1 \
	    || ! pkg-config --exists grpc++ protobuf 2>/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "make loadgen: installing $(LOADGEN_PACKAGES)"; \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -q $(LOADGEN_PACKAGES) >/dev/null \
	      || { apt-get update -q >/dev/null && \
	           DEBIAN_FRONTEND=noninteractive apt-get install -y -q $(LOADGEN_PACKAGES) >/dev/null; }; \
	  else \
	    echo "make loadgen: the gRPC C++ library is missing; install it with:" >&2; \
	    echo "  sudo apt-get install -y $(LOADGEN_PACKAGES)" >&2; exit 1; \
	  fi; \
	fi
	mkdir -p "$(LOADGEN_DIR)"
	protoc -I proto --cpp_out="$(LOADGEN_DIR)" --grpc_out="$(LOADGEN_DIR)" \
	  --plugin=protoc-gen-grpc="$$(command -v grpc_cpp_plugin)" proto/pretrade/v1/risk.proto
	$(CXX) -O2 -std=c++17 -I"$(LOADGEN_DIR)" bench/loadgen/loadgen.cc \
	  "$(LOADGEN_DIR)/pretrade/v1/risk.pb.cc" "$(LOADGEN_DIR)/pretrade/v1/risk.grpc.pb.cc" \
	  $$(pkg-config --cflags --libs grpc++ protobuf) -o "$@"

lint: $(STAMP) ## ruff and mypy
	"$(BIN)/ruff" check src tests bench
	"$(BIN)/mypy"

proto: $(STAMP) ## Regenerate src/pretrade/v1 from proto/pretrade/v1/*.proto
	"$(BIN)/python" -m grpc_tools.protoc -I proto --python_out=src --pyi_out=src \
		--grpc_python_out=src proto/pretrade/v1/*.proto

architecture: $(STAMP) ## Redraw docs/architecture.md (the rooms and their imports) from the code
	"$(BIN)/python" tests/import_graph.py --write docs/architecture.md

clean: ## Remove build output, the compiled core, generated C and .run/
	rm -rf build .run
	rm -f src/pretrade/_core/*.so
	rm -f $(CORE_PYX:.pyx=.c) $(CORE_PYX:.pyx=.html)
