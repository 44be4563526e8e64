"""Configured limits, the refusals that need them, and files that are not files."""

from __future__ import annotations

import os

import pytest
from safetensors.numpy import save

from fixtures.intake_corpus import lora_tensors
from gate.config import IntakeLimits, load_settings
from gate.intake import inspect_file


@pytest.fixture
def lora_file(tmp_path):
    path = tmp_path / "a.safetensors"
    path.write_bytes(save(lora_tensors("sd15", "kohya")))
    return path


def test_file_too_large(lora_file):
    result = inspect_file(lora_file, IntakeLimits(max_file_bytes=1000)).to_dict()
    assert result["error"]["code"] == "file_too_large"


def test_too_many_tensors(lora_file):
    result = inspect_file(lora_file, IntakeLimits(max_tensors=10)).to_dict()
    assert result["error"]["code"] == "too_many_tensors"


def test_header_limit_applies_before_reading(lora_file):
    result = inspect_file(lora_file, IntakeLimits(max_header_bytes=100)).to_dict()
    assert result["error"]["code"] == "header_too_large"


def test_a_fifo_is_refused_not_waited_on(tmp_path):
    fifo = tmp_path / "pipe.safetensors"
    os.mkfifo(fifo)
    fd = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)  # a writer exists, so open() does not block
    try:
        assert inspect_file(fifo).to_dict()["error"]["code"] == "file_unreadable"
    finally:
        os.close(fd)


def test_limits_come_from_environment_and_config_file(tmp_path, monkeypatch):
    config = tmp_path / "gate.toml"
    config.write_text('data_dir = "/srv/gate"\n[intake]\nmax_tensors = 77\nmax_header_bytes = 4096\n')
    monkeypatch.setenv("GATE_CONFIG", str(config))
    monkeypatch.setenv("GATE_INTAKE_MAX_HEADER_BYTES", "8192")
    settings = load_settings()
    assert str(settings.data_dir) == "/srv/gate"
    assert settings.intake.max_tensors == 77
    assert settings.intake.max_header_bytes == 8192  # the environment wins over the file
