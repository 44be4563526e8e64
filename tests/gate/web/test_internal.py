"""The API probe workers of other machines use: registry snapshots, for the worker token only, by version."""

from __future__ import annotations

import pytest

from gate.registry.snapshot import current_version
from probes.snapshot import FILES, read_snapshot

TOKEN = "worker-token-for-tests"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def gate(make_app):
    app = make_app(worker_token=TOKEN)
    from gate.web.context import db, settings

    with app.app_context():
        version = current_version(db(), settings().data_dir, "emb@1")
    return app.test_client(), version


def test_a_worker_fetches_each_file_of_a_snapshot_and_it_checks_out_as_that_version(gate, tmp_path):
    client, version = gate
    copy = tmp_path / "worker" / version
    copy.mkdir(parents=True)
    for name in FILES:
        answer = client.get(f"/internal/registry/{version}/{name}", headers=AUTH)
        assert answer.status_code == 200
        (copy / name).write_bytes(answer.data)
    assert read_snapshot(copy, version).version == version


@pytest.mark.parametrize("route, status, code", [
    ("/internal/registry/{version}/registry.json", 401, "worker_token_mismatch"),  # no token
    ("/internal/registry/reg-000000000000000000000000/registry.json", 404, "registry_snapshot_not_found"),
    ("/internal/registry/{version}/..%2Fgate.db", 404, "not_found"),  # no route has a slash in a name
    ("/internal/registry/{version}/gate.db", 404, "registry_snapshot_not_found"),
    ("/internal/registry/..%2F..%2Fgate/registry.json", 404, "not_found"),
    ("/internal/registry/..-reg/registry.json", 404, "registry_snapshot_not_found"),
])
def test_anything_else_is_refused_with_a_code(gate, route, status, code):
    client, version = gate
    answer = client.get(route.format(version=version), headers={} if status == 401 else AUTH)
    assert answer.status_code == status and answer.get_json()["error"]["code"] == code
