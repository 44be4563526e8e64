"""Benchmarks run on the fixture world, so they run in the demo profile unless told otherwise."""

import os

os.environ.setdefault("GATE_PROFILE", "demo")
