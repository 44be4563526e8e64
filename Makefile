# The two Quickstart commands, `make run` and `make test`, set up .venv first (once) and then do their job.
PYTHON ?= python3
# The CPU build on this kind of machine's disk; on a GPU host set TORCH_SPEC to the CUDA build you want.
TORCH_SPEC ?= torch==2.13.0
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup run test lint bench

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first: the project's range then admits it, so pip pulls no multi-GB CUDA build.
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

# The gate's main job as far as it is built: intake of every fixture LoRA and of the hostile corpus.
run: setup
	$(BIN)/python -m fixtures.intake_corpus var/intake-corpus
	$(BIN)/gate inspect fixtures/world/loras/*.safetensors
	$(BIN)/gate inspect var/intake-corpus/*.safetensors || [ $$? -eq 3 ]

test: setup
	$(BIN)/pytest

lint: setup
	$(BIN)/ruff check gate probes fixtures tests benchmarks

bench: setup
	$(BIN)/python -m benchmarks.intake_throughput
	$(BIN)/python -m benchmarks.intake_fuzz
