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
CORE_PYX := $(wildcard ext/pretrade/_core/*.pyx)

.DEFAULT_GOAL := help
.PHONY: help install build serve test bench lint proto architecture clean

help: ## List the targets
	@echo "usage: make TARGET [PYTHON=python3] [VENV=.venv] [PYTEST_ARGS=...] [BENCH_ARGS=...]"
	@echo
	@awk 'BEGIN { FS = ":.*## " } /^[a-z]+:.*## / { printf "  %-8s %s\n", $$1, $$2 }' \
		$(MAKEFILE_LIST)

install: $(STAMP) ## Create the virtualenv and install pretrade[dev] into it (editable)

# Re-run whenever the dependencies or the build script change.
$(STAMP): pyproject.toml setup.py
	test -x "$(BIN)/python" || $(PYTHON) -m venv "$(VENV)"
	"$(BIN)/python" -m pip install --quiet --upgrade pip
	"$(BIN)/pip" install -e '.[dev]'
	touch "$@"

# Cheap when nothing changed: cythonize and setuptools skip up-to-date files,
# so the in-place .so always matches the .pyx/.pxd sources.
build: $(STAMP) ## Compile the Cython core in place (PRETRADE_DEBUG=1 for a debug build)
	"$(BIN)/python" setup.py build_ext --inplace

# Local development: plaintext and no tokens, on the loopback address only
# (README, "Access control", says how to run it properly).
serve: build ## Run the gateway, demo book, audit archiver and risk desk on http://127.0.0.1:8080/
	"$(BIN)/pretrade" serve --demo --insecure --auth none --archive --desk 127.0.0.1:8080

test: build ## Run the test suite, then the benchmarks once with timing off (so they cannot rot)
	"$(BIN)/python" -m pytest $(PYTEST_ARGS)
	"$(BIN)/python" -m pytest bench --benchmark-disable -q

bench: build ## Run the latency suite; writes docs/performance.md and .benchmarks/ JSON
	"$(BIN)/python" -m pytest bench --benchmark-autosave $(BENCH_ARGS)

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
