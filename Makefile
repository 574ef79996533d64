# One entry point for a fresh machine:
#   make main   set up, then run the main job (a paper table on the embedded `mini` profile)
#   make test   set up, then run the whole test suite (slow end-to-end tests included)
# `make setup` is idempotent: a second run only checks the stamp and returns.

VENV      ?= .venv
PY        := $(VENV)/bin/python
PIP       := $(PY) -m pip
PIP_QUIET := --quiet --disable-pip-version-check
STAMP     := $(VENV)/.installed
PROFILE   ?= mini
TABLE     ?= table4
PYTEST_ARGS ?=

.PHONY: setup main test test-fast bench clean-venv

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile scripts/build_mmcv.sh
	test -x $(PY) || python3 -m venv $(VENV)
	# Java runs pycocoevalcap's PTB tokenizer and METEOR (captioning metrics).
	command -v java >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq default-jre-headless)
	# Headless Chromium renders the `harness report` HTML page in its test (a screenshot).
	command -v chromium >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq chromium)
	# torch/torchvision first: pip takes both from this machine's disk (see README).
	$(PIP) install $(PIP_QUIET) "torch==2.14.1" "torchvision==0.29.1"
	$(PIP) install $(PIP_QUIET) "setuptools<80" wheel ninja psutil numpy
	$(PIP) install $(PIP_QUIET) --no-deps "$$(scripts/build_mmcv.sh $(PY) | tail -1)"
	$(PIP) install $(PIP_QUIET) --no-build-isolation -e ".[mm,eval,dev]"
	# Test-only oracle for official parity; its pins (timm 0.6.13, fairscale 0.4.0) predate torch 2.
	$(PIP) install $(PIP_QUIET) --no-deps "torchscale==0.3.0" "fairscale==0.4.13"
	$(PY) -c "import torch, mmcv, mmcv.ops, mmdet, mmseg, mlflow, backbones, harness; print('setup ok: torch', torch.__version__, 'mmcv', mmcv.__version__)"
	touch $(STAMP)

main: setup
	$(VENV)/bin/harness run $(TABLE) --profile $(PROFILE)
	$(VENV)/bin/harness report $(TABLE) --profile $(PROFILE)

test: setup
	$(PY) -m pytest -q -rfEs $(PYTEST_ARGS)

test-fast: setup
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

bench: setup
	$(PY) benchmarks/bench_backbone.py

clean-venv:
	rm -rf $(VENV)
