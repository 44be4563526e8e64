"""compose.yaml describes the topology the tests run: each role's command is one `gate` accepts, the record's
side never serves a probe queue, and probe workers share nothing with the gate but Redis and its HTTP API."""

from __future__ import annotations

import yaml
from click.testing import CliRunner

from gate.cli import main
from gate.queues import PROBE_QUEUES, RECORD_QUEUES
from tests.conftest import REPO


def services() -> dict:
    return yaml.safe_load((REPO / "compose.yaml").read_text())["services"]


def test_every_role_runs_a_command_gate_accepts():
    for name, service in services().items():
        if name == "redis":
            continue
        answer = CliRunner().invoke(main, [*service["command"], "--help"])
        assert answer.exit_code == 0, (name, answer.output)


def queues(service: dict) -> set[str]:
    command = service["command"]
    return set(command[command.index("--queues") + 1].split(","))


def test_the_record_worker_and_the_probe_workers_split_the_queues_as_the_seam_does():
    roles = services()
    assert queues(roles["record"]) == set(RECORD_QUEUES)
    assert queues(roles["probe"]) == set(PROBE_QUEUES)


def test_probe_workers_share_no_disk_with_the_gate_and_reach_it_over_http():
    roles = services()
    probe, gate = roles["probe"], roles["gate"]
    assert not set(probe.get("volumes", [])) & set(gate["volumes"])
    assert roles["record"]["volumes"] == gate["volumes"]  # the record's side shares the record
    environment = probe["environment"]
    assert environment["GATE_WORKER_SHARED_DISK"] == "false"
    assert environment["GATE_PUBLIC_URL"].startswith("http://gate:") and environment["GATE_WORKER_TOKEN"]
