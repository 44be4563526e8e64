"""`gate users`, `gate tokens` and `gate audit` in a fresh process, as an operator at a shell runs them."""

from __future__ import annotations

import csv
import io
import json
import os
import sqlite3
import subprocess
import sys

from tests.conftest import REPO, run_gate


def test_accounts_tokens_and_the_audit_export(tmp_path):
    env = {**os.environ, "GATE_DATA_DIR": str(tmp_path / "data")}

    def gate(*args, stdin=None):
        return subprocess.run([sys.executable, "-m", "gate", *args], input=stdin, capture_output=True, text=True,
                              timeout=120, cwd=REPO, env=env)

    added = gate("users", "add", "alice", "--role", "moderator", "--password-stdin", stdin="a long password\n")
    assert added.returncode == 0, added.stderr
    weak = gate("users", "add", "bob", "--role", "moderator", "--password-stdin", stdin="short\n")
    assert weak.returncode == 1 and "password_weak" in weak.stderr and "Traceback" not in weak.stderr
    assert gate("users", "add", "civitai", "--role", "hub").returncode == 0
    rights = gate("users", "add", "toho", "--role", "rights_holder")
    assert rights.returncode == 2 and "--party" in rights.stderr
    listed = json.loads(gate("users", "list", "--json").stdout)
    assert [(a["username"], a["role"]) for a in listed] == [("alice", "moderator"), ("civitai", "hub")]

    created = gate("tokens", "create", "civitai", "--name", "relay")
    token = created.stdout.strip()
    assert created.returncode == 0 and token.startswith("gt_")
    assert token not in (tmp_path / "data" / "gate.db").read_bytes().decode("latin-1")  # only its sha256 is kept
    assert gate("tokens", "create", "alice").returncode == 1  # people sign in; no tokens
    assert gate("tokens", "revoke", "1", "--reason", "rotated").returncode == 0
    assert "revoked" in gate("tokens", "list").stdout
    assert gate("users", "disable", "alice", "--reason", "left").returncode == 0
    assert "disabled" in gate("users", "list").stdout

    exported = gate("audit", "export", "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(exported.stdout)))
    assert [r["action"] for r in rows] == ["account.create", "account.create", "token.create", "token.revoke",
                                           "account.disable"]
    assert rows[-1]["reason"] == "left" and rows[-1]["actor_role"] == "operator"
    as_json = json.loads(gate("audit", "export", "--format", "json").stdout)
    assert [r["hash"] for r in as_json] == [r["hash"] for r in rows]
    assert gate("audit", "verify").stdout.startswith("ok: 5 entries")
    assert gate("audit", "export", "--format", "xml").returncode == 2

    anchor = gate("audit", "head").stdout.strip()
    assert anchor == f"5:{rows[-1]['hash']}"
    record = sqlite3.connect(tmp_path / "data" / "gate.db")  # someone with the file cuts the log back
    record.execute("drop trigger audit_log_no_delete")
    record.execute("delete from audit_log where id = 5")
    record.commit()
    assert gate("audit", "verify").returncode == 0  # the chain alone cannot tell: what is left still links
    cut = gate("audit", "verify", "--anchor", anchor)
    assert cut.returncode == 1 and "entry 5 is anchored but gone" in cut.stderr
    assert gate("audit", "verify", "--anchor", "5:nothex").returncode == 2


def test_operators_registry_and_blocklist_changes_from_the_cli_are_audited(tmp_path, world):
    env = {"GATE_DATA_DIR": str(tmp_path / "data")}
    tensor_hash = "ab" * 32
    assert run_gate("blocklist", "add", tensor_hash, "--reason", "takedown 12", env=env).returncode == 0
    character = next(c for c in world.characters() if c["registered"])["id"]
    retired = run_gate("characters", "retire", character, env=env)
    assert retired.returncode == 0, retired.stderr[-2000:]
    exported = run_gate("audit", "export", "--format", "json", env=env)
    entries = [(e["action"], e["subject_id"], e["actor_role"]) for e in json.loads(exported.stdout)]
    assert ("blocklist.add", tensor_hash, "operator") in entries
    assert ("character.retire", character, "operator") in entries
    assert run_gate("audit", "verify", env=env).returncode == 0
