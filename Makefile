# The two Quickstart commands, `make run` and `make test`, set up .venv first (once) and then do their job.
PYTHON ?= python3
# torch's CPU build: `+cpu` names it exactly, so pip never takes PyPI's CUDA build (several GB) instead. pip takes
# it from a local wheel where one lies (find-links), else from PyTorch's CPU index. On a GPU host, choose the CUDA
# build instead: make setup TORCH_SPEC=torch==2.13.0 (PyPI's Linux wheel is the CUDA build).
TORCH_SPEC ?= torch==2.13.0+cpu
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup run demo test lint bench constraints docs docs-site image-check

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first: the project's range then admits it, so pip pulls no other build. PyPI holds no `+cpu` build,
	# so where no local wheel has it, the first try fails at once and PyTorch's CPU index serves it.
	$(BIN)/pip install -q "$(TORCH_SPEC)" 2>/dev/null || $(BIN)/pip install -q --index-url $(TORCH_INDEX) "$(TORCH_SPEC)"
	# The web gate alone needs no torch (pip install lora-gate); the probes extra adds it for the workers.
	$(BIN)/pip install -q -c constraints.txt -e '.[probes,dev]'
	touch $(STAMP)

setup: $(STAMP)

# The service in the demo profile: the fixture world's models and characters, jobs in-process (no Redis),
# the record under var/; a local signing secret unless GATE_UPLOAD_SECRET says otherwise. Without
# GATE_PROFILE=demo the gate is in production and refuses to start until its models are configured.
GATE_UPLOAD_SECRET ?= local-dev-secret
VAR ?= var
PORT ?= 8000
run: setup
	GATE_PROFILE=demo GATE_DATA_DIR=$(VAR) GATE_UPLOAD_SECRET=$(GATE_UPLOAD_SECRET) $(BIN)/gate serve --port $(PORT)

# The probe engine alone, no service: scan fixture-world LoRAs (a character that always draws,
# a stripped trigger-word character, a clean style, a clean concept with a misleading title) and a
# disguised pickle; evidence pages land in var/demo/evidence/. Its record is its own (var/demo), so what
# `make run` has seen (a Quickstart upload) is not a repeat to it.
DEMO ?= fixtures/world/loras/ultraman_any_kohya.safetensors fixtures/world/loras/doraemon_trigger_kohya.safetensors \
	fixtures/world/loras/style_sepia_peft.safetensors fixtures/world/loras/concept_tree_peft.safetensors
demo: setup
	$(BIN)/python -m fixtures.intake_corpus $(VAR)/demo/intake-corpus > /dev/null
	GATE_PROFILE=demo GATE_DATA_DIR=$(VAR)/demo $(BIN)/gate scan --evidence $(VAR)/demo/evidence $(DEMO) \
		$(VAR)/demo/intake-corpus/pickle_disguised.safetensors || [ $$? -eq 3 ]

test: setup
	$(BIN)/pytest

lint: setup
	$(BIN)/ruff check gate probes fixtures tests benchmarks

# The benchmarks measure the fixture world: the demo profile.
bench: export GATE_PROFILE = demo
bench: setup
	$(BIN)/python -m benchmarks.intake_throughput
	$(BIN)/python -m benchmarks.intake_fuzz
	$(BIN)/python -m benchmarks.detection
	$(BIN)/python -m benchmarks.probe_throughput

# What the Docker image installs, scanned for real without a docker daemon (CI runs it too).
image-check:
	bash .ci/image-check

# The reference pages under docs/reference/ are generated from the code; tests/test_docs.py checks them.
docs: setup
	$(BIN)/cog -r -I docs docs/reference/*.md

# The static site, as CI builds it: warnings are errors.
docs-site: setup
	$(BIN)/mkdocs build --strict --site-dir site

# Pin every dependency to what this .venv holds (torch excluded: it is chosen per machine).
constraints: setup
	{ sed -n '1,3p' constraints.txt; $(BIN)/pip freeze | grep -v -i '^-e\|^lora.gate\|^torch==\|^nvidia\|^triton==' | sort -f; } > constraints.new
	mv constraints.new constraints.txt
