# The two Quickstart commands, `make run` and `make test`, set up .venv first (once) and then do their job.
PYTHON ?= python3
# The CPU build on this kind of machine's disk; on a GPU host set TORCH_SPEC to the CUDA build you want.
TORCH_SPEC ?= torch==2.13.0
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup run demo test lint bench constraints docs docs-site

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first: the project's range then admits it, so pip pulls no multi-GB CUDA build.
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	# The web gate alone needs no torch (pip install lora-gate); the probes extra adds it for the workers.
	$(BIN)/pip install -q -c constraints.txt -e '.[probes,dev]'
	touch $(STAMP)

setup: $(STAMP)

# The service in the demo profile: the fixture world's models and characters, jobs in-process (no Redis),
# the record under var/; a local signing secret unless GATE_UPLOAD_SECRET says otherwise. Without
# GATE_PROFILE=demo the gate is in production and refuses to start until its models are configured.
GATE_UPLOAD_SECRET ?= local-dev-secret
run: setup
	GATE_PROFILE=demo GATE_UPLOAD_SECRET=$(GATE_UPLOAD_SECRET) $(BIN)/gate serve

# The probe engine alone, no service: scan fixture-world LoRAs (a character that always draws,
# a stripped trigger-word character, a clean style, a clean concept with a misleading title) and a
# disguised pickle; evidence pages land in var/demo/evidence/. Its record is its own (var/demo), so what
# `make run` has seen (a Quickstart upload) is not a repeat to it.
DEMO := fixtures/world/loras/ultraman_any_kohya.safetensors fixtures/world/loras/doraemon_trigger_kohya.safetensors \
	fixtures/world/loras/style_sepia_peft.safetensors fixtures/world/loras/concept_tree_peft.safetensors
demo: setup
	$(BIN)/python -m fixtures.intake_corpus var/demo/intake-corpus > /dev/null
	GATE_PROFILE=demo GATE_DATA_DIR=var/demo $(BIN)/gate scan --evidence var/demo/evidence $(DEMO) \
		var/demo/intake-corpus/pickle_disguised.safetensors || [ $$? -eq 3 ]

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
