"""The real `gate` command, in a fresh process: exit codes, output, and what it never does."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import run_gate


def test_inspect_json_for_an_accepted_lora(corpus_dir, gate_cli):
    done = gate_cli("inspect", "--json", str(corpus_dir / "sdxl_kohya.safetensors"))
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["ok"] is True
    assert (result["format"], result["base_family"], result["rank"]) == ("kohya", "sdxl", 4)
    assert set(result) >= {"ok", "format", "base_family", "rank", "tensor_hash", "file_sha256", "metadata"}


def test_inspect_refusal_exits_3_with_a_code_and_no_traceback(corpus_dir, gate_cli):
    done = gate_cli("inspect", "--json", str(corpus_dir / "pickle_disguised.safetensors"))
    assert done.returncode == 3
    assert json.loads(done.stdout)["error"]["code"] == "format_pickle"
    assert "Traceback" not in done.stderr + done.stdout
    assert "pwned" not in done.stdout  # the payload's print never ran


def test_inspect_readable_summary(corpus_dir, gate_cli):
    done = gate_cli("inspect", str(corpus_dir / "sd15_claims_sdxl.safetensors"),
                    str(corpus_dir / "trailing_bytes.safetensors"), str(corpus_dir / "sd15_oft_kohya.safetensors"),
                    str(corpus_dir / "sd15_kohya_bundled_embedding.safetensors"))
    assert done.returncode == 3
    assert "accepted" in done.stdout and "kohya LoRA for sd15 (rank 4," in done.stdout
    assert "claims sdxl" in done.stdout
    assert "refused   trailing_bytes" in done.stdout
    assert "oft LoRA for unknown (no rank, 1 modules" in done.stdout
    assert "embeds    ultr4man (bundled textual-inversion tokens" in done.stdout


def test_usage_errors_exit_2(gate_cli, tmp_path):
    assert gate_cli("inspect").returncode == 2
    assert gate_cli("inspect", str(tmp_path / "missing.safetensors")).returncode == 2
    assert gate_cli("no-such-command").returncode == 2


def test_whole_corpus_never_unpickles_and_never_imports_torch(corpus_dir, corpus):
    script = (
        "import pickle, sys\n"
        "def refuse(*a, **k): raise AssertionError('something tried to unpickle')\n"
        "pickle.loads = pickle.load = refuse\n"
        "pickle.Unpickler = pickle._Unpickler = refuse\n"
        "from gate.intake import inspect_file\n"
        f"for name in {[c['file'] for c in corpus]!r}:\n"
        f"    inspect_file({str(corpus_dir)!r} + '/' + name)\n"
        "assert 'torch' not in sys.modules and 'diffusers' not in sys.modules, 'heavy import'\n"
        "print('clean')\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "clean", done.stderr


def test_python_dash_m_gate_works():
    done = run_gate("--help")
    assert done.returncode == 0 and "inspect" in done.stdout


@pytest.mark.parametrize("content", [b"just some notes\n", b"\x89PNG\r\n\x1a\n" + b"\0" * 64],
                         ids=["text-file", "corrupt-png"])
def test_characters_add_refuses_bad_references_before_loading_any_model(tmp_path, content):
    """The references are validated first: a process where torch cannot even be imported refuses them with
    their code, so nothing was loaded to find out."""
    from tests.support import without_torch

    reference = tmp_path / "reference.png"
    reference.write_bytes(content)
    env = {"GATE_DATA_DIR": str(tmp_path / "data"), **without_torch(tmp_path)}
    result = run_gate("characters", "add", "Someone", "--rights-holder", "Them", "--ref", str(reference), env=env)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "image_format" in result.stderr or "image_corrupt" in result.stderr, result.stderr[-500:]
