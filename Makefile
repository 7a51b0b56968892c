# One entry point for developers and CI. Every target installs what it needs.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
# onnxruntime-gpu on hosts with an NVIDIA driver, the CPU wheel elsewhere (never both).
ORT_EXTRA ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && echo gpu || echo cpu)

.PHONY: venv test check fmt lint types demo bench proto proto-check clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[$(ORT_EXTRA),dev]'
	touch $(STAMP)

venv: $(STAMP)

test: venv
	$(PY) -m pytest -q

fmt: venv
	$(VENV)/bin/ruff format .

lint: venv
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .

types: venv
	$(VENV)/bin/mypy

check: lint types test

demo: venv
	$(PY) -m deploy.demo

bench: venv
	$(PY) bench/overhead.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
