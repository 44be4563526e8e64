"""Property: whatever the bytes, inspect returns a result or a typed refusal, quickly and in bounded memory."""

from __future__ import annotations

import random
import tracemalloc

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fixtures.mutations import mutate, seed_files
from gate.errors import Refusal
from gate.intake import inspect_file

SEEDS = seed_files()
CODES = {str(code) for code in Refusal}


@settings(max_examples=400, deadline=2000, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, len(SEEDS) - 1), rng_seed=st.integers(0, 2**32 - 1))
def test_mutated_files_never_crash_or_allocate_much(tmp_path, seed, rng_seed):
    path = tmp_path / "fuzz.safetensors"
    path.write_bytes(mutate(SEEDS[seed], random.Random(rng_seed)))
    tracemalloc.start()
    try:
        result = inspect_file(path).to_dict()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result["ok"] or result["error"]["code"] in CODES
    assert peak < 48 * 2**20  # two 8 MiB chunk buffers plus the header at most
