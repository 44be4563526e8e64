"""Settings are checked as they load: fixed-choice values, the production profile's models, and the CLI's exit 2."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from gate.config import ConfigError, Settings, load_settings

REPO = Path(__file__).resolve().parents[2]

# (variable, TOML section or "", key, a bad value, the allowed values as the message lists them)
BAD = [
    ("GATE_NOT_PROBED_VERDICT", "", "not_probed_verdict", "bogus", "allow, quarantine, block"),
    ("GATE_RECORD_SYNC", "", "record_sync", "sometimes", "normal, full"),
    ("GATE_HUGGINGFACE_BLOCK_ACTION", "huggingface", "block_action", "privat", "'' (unset), private, gated"),
    ("GATE_DEVICE", "", "device", "gpu", "cpu, cuda, cuda:N, mps"),
    ("GATE_DEVICE", "", "device", "cuda:", "cpu, cuda, cuda:N, mps"),
    ("GATE_PROFILE", "", "profile", "dev", "production, demo"),
]
GOOD = [
    ("GATE_NOT_PROBED_VERDICT", "block"), ("GATE_NOT_PROBED_VERDICT", "allow"), ("GATE_RECORD_SYNC", "full"),
    ("GATE_HUGGINGFACE_BLOCK_ACTION", "private"), ("GATE_HUGGINGFACE_BLOCK_ACTION", "gated"),
    ("GATE_HUGGINGFACE_BLOCK_ACTION", ""), ("GATE_DEVICE", "cpu"), ("GATE_DEVICE", "cuda"), ("GATE_DEVICE", "cuda:1"),
    ("GATE_DEVICE", "mps"), ("GATE_DEVICE", ""), ("GATE_PROFILE", "production"), ("GATE_PROFILE", "demo"),
]


def _toml(section: str, key: str, value: str) -> str:
    return (f"[{section}]\n" if section else "") + f'{key} = "{value}"\n'


@pytest.mark.parametrize("variable,section,key,value,allowed", BAD)
def test_a_bad_value_in_the_environment_names_variable_value_and_choices(monkeypatch, variable, section, key, value,
                                                                         allowed):
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as error:
        load_settings()
    assert f"{variable}={value!r} is not allowed" in error.value.message and allowed in error.value.message


@pytest.mark.parametrize("variable,section,key,value,allowed", BAD)
def test_a_bad_value_in_the_config_file_names_the_variable_too(monkeypatch, tmp_path, variable, section, key, value,
                                                               allowed):
    config = tmp_path / "gate.toml"
    config.write_text(_toml(section, key, value))
    monkeypatch.setenv("GATE_CONFIG", str(config))
    monkeypatch.delenv(variable, raising=False)  # the environment would win over the file (GATE_PROFILE is set)
    with pytest.raises(ConfigError) as error:
        load_settings()
    assert f"{variable}={value!r} is not allowed" in error.value.message and allowed in error.value.message


@pytest.mark.parametrize("variable,value", GOOD)
def test_allowed_values_load(monkeypatch, variable, value):
    monkeypatch.setenv(variable, value)
    load_settings()


def test_overrides_are_checked_like_the_environment():
    with pytest.raises(ConfigError, match="GATE_NOT_PROBED_VERDICT='maybe'"):
        load_settings({"not_probed_verdict": "maybe"})


@pytest.mark.parametrize("variable,value", [("GATE_JOB_TIMEOUT", "soon"), ("GATE_REVIEW_CLAIM_MINUTES", "x"),
                                            ("GATE_FETCH_ALLOW_PRIVATE_ADDRESSES", "maybe")])
def test_a_value_of_the_wrong_type_names_the_variable(monkeypatch, variable, value):
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError, match=f"{variable}: expected .*, got {value!r}"):
        load_settings()


def _choices(name: str, cls=Settings) -> tuple:
    return next(f for f in cls.__dataclass_fields__.values() if f.name == name).metadata["choices"]


def test_the_choices_are_the_ones_the_code_acts_on():
    from gate.config import HuggingFaceSettings
    from gate.detection.decisions import Verdict
    from gate.hubs.enforcement import BLOCK_ACTIONS

    assert set(_choices("not_probed_verdict")) == {v.value for v in Verdict}
    assert _choices("block_action", HuggingFaceSettings) == ("", *BLOCK_ACTIONS)


# ---------------------------------------------------------------------------------------------------------
# Profiles: only the demo falls back to the fixture world.

def test_production_without_models_refuses_and_never_returns_world_paths(monkeypatch, tmp_path):
    monkeypatch.setenv("GATE_PROFILE", "production")
    settings = load_settings({"data_dir": str(tmp_path)})
    for name, variable in (("base_model", "GATE_BASE_MODEL_DIR"), ("embedder", "GATE_EMBEDDER_DIR")):
        with pytest.raises(ConfigError, match=f"{variable} is not set.*GATE_PROFILE=demo"):
            getattr(settings, name)
    with pytest.raises(ConfigError, match="GATE_BASE_MODEL_DIR"):
        settings.require_models()
    assert settings.calibration_file == tmp_path / "calibration.json"  # missing: "run gate calibrate", not the world's


def test_production_with_models_uses_them(monkeypatch, tmp_path):
    monkeypatch.setenv("GATE_PROFILE", "production")
    monkeypatch.setenv("GATE_BASE_MODEL_DIR", str(tmp_path / "base"))
    monkeypatch.setenv("GATE_EMBEDDER_DIR", str(tmp_path / "embedder"))
    assert load_settings().require_models() == (tmp_path / "base", tmp_path / "embedder")


def test_the_demo_profile_falls_back_to_the_world(tmp_path):
    settings = load_settings({"profile": "demo", "data_dir": str(tmp_path)})
    assert settings.require_models() == (settings.world_dir / "base", settings.world_dir / "embedder")
    assert settings.calibration_file == settings.world_dir / "calibration.json"
    assert settings.image_embedder == settings.world_dir / "image_embedder"


def test_the_image_embedder_is_the_embedder_unless_one_is_named(monkeypatch, tmp_path):
    monkeypatch.setenv("GATE_PROFILE", "production")
    monkeypatch.setenv("GATE_EMBEDDER_DIR", str(tmp_path / "clip"))
    assert load_settings().image_embedder == tmp_path / "clip"
    monkeypatch.setenv("GATE_IMAGE_EMBEDDER_DIR", str(tmp_path / "dinov2"))
    assert load_settings().image_embedder == tmp_path / "dinov2"
    monkeypatch.delenv("GATE_EMBEDDER_DIR")
    monkeypatch.delenv("GATE_IMAGE_EMBEDDER_DIR")
    with pytest.raises(ConfigError, match="GATE_EMBEDDER_DIR is not set"):  # never the world's, in production
        _ = load_settings().image_embedder
    # The demo with its own embedder named screens images with it, not with the world's image embedder.
    demo = load_settings({"profile": "demo", "embedder_dir": str(tmp_path / "clip")})
    assert demo.image_embedder == tmp_path / "clip"


@pytest.mark.parametrize("profile,seeded", [("production", False), ("demo", True)])
def test_only_the_demo_record_is_seeded_with_the_world_characters(tmp_path, profile, seeded):
    from gate.registry.characters import list_characters
    from gate.runtime import open_record

    db = open_record(load_settings({"profile": profile, "data_dir": str(tmp_path)}))
    assert bool(list_characters(db, include_retired=True)) is seeded


# ---------------------------------------------------------------------------------------------------------
# The real CLI: exit 2, the message, no traceback.

def _gate(*args: str, tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in ("GATE_BASE_MODEL_DIR", "GATE_EMBEDDER_DIR")}
    clean.update({"PYTHONPATH": str(REPO), "GATE_DATA_DIR": str(tmp_path / "data"),
                  "REDIS_URL": "redis://127.0.0.1:6379/15", **env})
    return subprocess.run([sys.executable, "-m", "gate", *args], cwd=REPO, env=clean, capture_output=True, text=True,
                          timeout=120)


SERVE, WORKER = ("serve", "--port", "0"), ("worker", "--burst", "--queues", "intake")


@pytest.mark.parametrize("command", [SERVE, WORKER], ids=["serve", "worker"])
def test_production_without_a_base_model_does_not_start(tmp_path, command):
    done = _gate(*command, tmp_path=tmp_path, GATE_PROFILE="production")
    assert done.returncode == 2, done.stderr
    assert "Error: GATE_BASE_MODEL_DIR is not set" in done.stderr and "GATE_PROFILE=demo" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("command", [SERVE, WORKER, ("characters", "list")], ids=["serve", "worker", "characters"])
def test_a_bad_setting_stops_every_command(tmp_path, command):
    done = _gate(*command, tmp_path=tmp_path, GATE_NOT_PROBED_VERDICT="bogus")
    assert done.returncode == 2, done.stderr
    assert ("Error: GATE_NOT_PROBED_VERDICT='bogus' is not allowed; use one of: allow, quarantine, block"
            in done.stderr)
    assert "Traceback" not in done.stderr


def test_a_mistyped_setting_stops_a_command_too(tmp_path):
    done = _gate("status", tmp_path=tmp_path, GATE_JOB_TIMEOUT="soon")
    assert done.returncode == 2 and "Error: GATE_JOB_TIMEOUT: expected int, got 'soon'" in done.stderr
    assert "Traceback" not in done.stderr
