# clipaudit — the two commands a new user runs:
#   make demo   set up (venv, deps, generated protobuf code) and run the main job, embedded
#   make test   set up, start the real local stack (Kafka, MinIO, Prometheus), run every test
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
UV_VERSION := 0.9.11
REQ_HASH := $(shell cat requirements.txt pyproject.toml | sha256sum | cut -c1-16)
VENV_STAMP := $(VENV)/.installed-$(REQ_HASH)
PROTOS := $(shell find proto -name '*.proto')
PROTO_STAMP := clipaudit/.proto-$(shell cat $(PROTOS) | sha256sum | cut -c1-16)
export OMP_WAIT_POLICY ?= PASSIVE
PYTEST_ARGS ?=

.PHONY: help setup venv proto tools stack-up stack-down test test-unit demo bench clean

help:
	@echo "make demo   - set up and run the four studies on synthetic data (embedded mode)"
	@echo "make test   - set up, start the real local stack and run the whole test suite"
	@echo "make setup  - venv + generated protobuf code only;  make tools - build/cache Kafka, MinIO"

# The venv is keyed on the hash of requirements.txt + pyproject.toml: a warm machine reinstalls nothing.
# uv's download cache (~/.cache/uv) makes a fresh clone's venv a local copy, not a download.
$(VENV_STAMP): requirements.txt pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(VENV)/bin/pip --disable-pip-version-check -q install uv==$(UV_VERSION)
	$(VENV)/bin/uv pip install --python $(PY) --compile-bytecode -r requirements.txt
	$(VENV)/bin/uv pip install --python $(PY) --no-deps -e .
	@rm -f $(VENV)/.installed-* && touch $@

venv: $(VENV_STAMP)

# Generated protobuf/gRPC code goes next to nothing hand-written: clipaudit/<pkg>/v1/*_pb2*.py (git-ignored).
$(PROTO_STAMP): $(PROTOS) | $(VENV_STAMP)
	$(PY) -m grpc_tools.protoc -I proto --python_out=. --pyi_out=. --grpc_python_out=. $(PROTOS)
	@rm -f clipaudit/.proto-* && touch $@

proto: $(PROTO_STAMP)

setup: venv proto

# System packages (Debian) and the servers' builds, cached under ~/.cache/clipaudit.
tools: setup
	PYTHON=$(PY) scripts/tools.sh

stack-up: tools
	$(PY) -m clipaudit.cli stack up

stack-down:
	-$(PY) -m clipaudit.cli stack down

# Unit tests need no server; integration tests talk to the real stack started here;
# gpu tests skip without CUDA. The stack is stopped afterwards whatever the result.
test: stack-up
	@set -o pipefail; rc=0; \
	$(PY) -m pytest $(PYTEST_ARGS) || rc=$$?; \
	$(PY) -m clipaudit.cli stack down >/dev/null || true; \
	exit $$rc

test-unit: setup
	$(PY) -m pytest -m "not integration" $(PYTEST_ARGS)

demo: setup
	$(PY) -m clipaudit.cli demo $(DEMO_ARGS)

bench: setup
	@for b in benchmarks/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) build *.egg-info .state out
	find clipaudit -name '*_pb2*.py*' -delete; rm -f clipaudit/.proto-*
