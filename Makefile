# One entry point for developers and CI. Every target installs what it needs.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
# onnxruntime-gpu on hosts with an NVIDIA driver, the CPU wheel elsewhere (never both).
ORT_EXTRA ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && echo gpu || echo cpu)
# The project's .proto files; their generated modules are committed next to the Python code.
PROTOS := $(shell find proto -name '*.proto' | sort)

.PHONY: venv broker browser triton-peer test check fmt lint types demo bench proto proto-check clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[$(ORT_EXTRA),dev]'
	touch $(STAMP)

venv: $(STAMP)

# The tests and the demo start private mosquitto brokers (Debian's package; sudo unless root).
broker:
	@command -v mosquitto >/dev/null 2>&1 || test -x /usr/sbin/mosquitto || { \
		echo "installing mosquitto, the MQTT broker the tests and the demo start"; \
		sudo=$$(test "$$(id -u)" -eq 0 || echo sudo); \
		$$sudo apt-get update -q && \
		DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -q mosquitto; }

# The dashboard's browser test drives Debian's headless Chromium through its chromedriver.
browser:
	@{ test -x /usr/bin/chromium && test -x /usr/bin/chromedriver; } || { \
		echo "installing chromium and chromium-driver, the browser the dashboard test drives"; \
		sudo=$$(test "$$(id -u)" -eq 0 || echo sudo); \
		$$sudo apt-get update -q && \
		DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -q chromium chromium-driver; }

# A real Triton (the nvidia-pytriton wheel's tritonserver) that the routing tests start as a
# remote pool, in bench/.peers/triton-venv; a venv already set up is left alone.
triton-peer: venv
	PYTHON=$(PYTHON) bash bench/peers/setup.sh triton

test: venv broker browser triton-peer
	$(PY) -m pytest -q

fmt: venv
	$(VENV)/bin/ruff format .

lint: venv
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .

types: venv
	$(VENV)/bin/mypy

check: lint types test

demo: venv broker
	$(PY) -m deploy.demo

bench: venv
	$(PY) bench/overhead.py

# Regenerate the committed protobuf modules after editing proto/.
proto: venv
	$(PY) -m grpc_tools.protoc -Iproto --python_out=. --pyi_out=. $(PROTOS)

# Fail if the committed generated modules differ from what proto/ generates today.
proto-check: venv
	@tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && \
	$(PY) -m grpc_tools.protoc -Iproto --python_out="$$tmp" --pyi_out="$$tmp" $(PROTOS) && \
	status=0 && for f in $$(cd "$$tmp" && find . -type f | sort); do \
		cmp -s "$$tmp/$$f" "$$f" || { echo "stale: $$f (run make proto)"; status=1; }; \
	done && exit $$status

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
