"""Repeat infringement through the real service on RQ: `gate serve`, a real Redis and an intake worker only.
With no probe worker running, a scan that needed a render could never finish: these finish."""

from __future__ import annotations

from fixtures.lora_transforms import write_transforms
from gate.intake import inspect_file
from gate.record.db import open_db
from gate.registry import blocklist
from tests.conftest import REPO
from tests.support import deliver_upload, final_state, needs_redis

pytestmark = needs_redis

ORIGINAL = REPO / "fixtures" / "world" / "loras" / "kumamon_any_kohya.safetensors"
PARTNER = REPO / "fixtures" / "world" / "loras" / "style_stripes_kohya.safetensors"


def test_re_uploads_of_a_blocked_lora_are_decided_on_the_intake_queue_alone(service, tmp_path):  # noqa: F811
    copies = write_transforms(ORIGINAL, tmp_path / "copies", PARTNER, ("metadata", "combined", "merged"))
    db = open_db(tmp_path / "data" / "gate.db")  # the service's record
    blocklist.add(db, inspect_file(ORIGINAL).fingerprints.tensor_hash, "takedown 12", "operator")
    service.spawn("worker", "--queues", "intake", log="worker-intake")  # no probe worker at all
    first = final_state(deliver_upload(service, ORIGINAL, "m-orig")["status_url"], service, timeout=120)
    assert first["verdict"] == "block"
    db["blocklist"].delete_where()  # from here only the record of the blocked upload catches re-uploads
    exact = final_state(deliver_upload(service, copies["metadata"], "m-exact")["status_url"], service, timeout=120)
    assert exact["verdict"] == "block" and first["id"] in exact["reasons"][0]["message"]
    for name in ("combined", "merged"):
        final = final_state(deliver_upload(service, copies[name], f"m-{name}")["status_url"], service, timeout=120)
        assert final["state"] == "decided" and final["verdict"] == "quarantine", final
        reason = next(r for r in final["reasons"] if r["kind"] == "near_duplicate")
        assert reason["matched_upload"] == first["id"] and reason["score"] >= 0.5
        assert final["probe_set"] is None
