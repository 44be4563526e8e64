"""Liveness, readiness and Prometheus metrics for operators."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from gate.web.record import db

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz():
    """The process answers."""
    return jsonify(status="ok")


@bp.get("/readyz")
def readyz():
    """The record is writable and the job queue is reachable."""
    checks = {}
    try:
        db().execute("select 1")
        checks["record"] = "ok"
    except Exception as exc:  # noqa: BLE001 - any failure means not ready
        checks["record"] = f"error: {exc}"
    from gate.jobs import dispatcher

    checks["queue"] = dispatcher().health()
    ready = all(value == "ok" for value in checks.values())
    return jsonify(status="ready" if ready else "not ready", checks=checks), 200 if ready else 503


@bp.get("/metrics")
def metrics():
    """Prometheus text format: uploads by state, decisions by verdict, queue depth."""
    lines = ["# HELP gate_uploads Uploads in the record, by state.", "# TYPE gate_uploads gauge"]
    for row in db().query("select state, count(*) as n from uploads group by state"):
        lines.append(f'gate_uploads{{state="{row["state"]}"}} {row["n"]}')
    lines += ["# HELP gate_decisions Decided uploads, by verdict.", "# TYPE gate_decisions gauge"]
    for row in db().query("select verdict, count(*) as n from uploads where verdict is not null group by verdict"):
        lines.append(f'gate_decisions{{verdict="{row["verdict"]}"}} {row["n"]}')
    from gate.jobs import dispatcher

    lines += ["# HELP gate_queue_depth Jobs waiting.", "# TYPE gate_queue_depth gauge",
              f"gate_queue_depth {dispatcher().depth()}"]
    return Response("\n".join(lines) + "\n", mimetype="text/plain; version=0.0.4")
