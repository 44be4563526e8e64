"""Liveness, readiness and Prometheus metrics for operators."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from gate import telemetry
from gate.pipeline.dispatch import dispatcher
from gate.web.context import db, settings

bp = Blueprint("health", __name__)


# A gate with a shield, as SVG: every page names it (base.html), and browsers that ask /favicon.ico anyway get
# it there too, instead of a 404 in the log on every page.
FAVICON = ('<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 32 32"><path fill="#2456d6" d="M16 2 4 6v9c0 7.5 '
           '5.1 12.7 12 15 6.9-2.3 12-7.5 12-15V6z"/><path fill="#fff" d="M10 10h3v12h-3zm9 0h3v12h-3zm-6 5h6v2h-6z"/>'
           '</svg>')


@bp.get("/favicon.ico")
@bp.get("/favicon.svg")
def favicon():
    return Response(FAVICON, mimetype="image/svg+xml", headers={"Cache-Control": "public, max-age=86400"})


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
    checks["queue"] = dispatcher(settings()).health()
    ready = all(value == "ok" for value in checks.values())
    return jsonify(status="ready" if ready else "not ready", checks=checks), 200 if ready else 503


@bp.get("/metrics")
def metrics():
    """Prometheus text format: uploads by state, decisions by verdict, deliveries, review items, queue depth."""
    lines = ["# HELP gate_uploads Uploads in the record, by state.", "# TYPE gate_uploads gauge"]
    for row in db().query("select state, count(*) as n from uploads group by state"):
        lines.append(f'gate_uploads{{state="{row["state"]}"}} {row["n"]}')
    lines += ["# HELP gate_decisions Decided uploads, by verdict.", "# TYPE gate_decisions gauge"]
    for row in db().query("select verdict, count(*) as n from uploads where verdict is not null group by verdict"):
        lines.append(f'gate_decisions{{verdict="{row["verdict"]}"}} {row["n"]}')
    lines += ["# HELP gate_deliveries Webhook and URL deliveries in the record, by kind and state.",
              "# TYPE gate_deliveries gauge"]
    for row in db().query("select kind, state, count(*) as n from deliveries group by kind, state"):
        lines.append(f'gate_deliveries{{kind="{row["kind"]}",state="{row["state"]}"}} {row["n"]}')
    lines += ["# HELP gate_image_sets Image sets (training sets, generated images) in the record, by kind and state.",
              "# TYPE gate_image_sets gauge"]
    for row in db().query("select kind, state, count(*) as n from image_sets group by kind, state"):
        lines.append(f'gate_image_sets{{kind="{row["kind"]}",state="{row["state"]}"}} {row["n"]}')
    lines += ["# HELP gate_image_decisions Decided image sets, by kind and verdict.",
              "# TYPE gate_image_decisions gauge"]
    for row in db().query("select kind, verdict, count(*) as n from image_sets where verdict is not null "
                          "group by kind, verdict"):
        lines.append(f'gate_image_decisions{{kind="{row["kind"]}",verdict="{row["verdict"]}"}} {row["n"]}')
    lines += ["# HELP gate_review_items Uploads waiting for a person, by review status.",
              "# TYPE gate_review_items gauge"]
    for row in db().query("select review_status, count(*) as n from uploads where review_status is not null "
                          "group by review_status"):
        lines.append(f'gate_review_items{{status="{row["review_status"]}"}} {row["n"]}')
    lines += ["# HELP gate_queue_depth Jobs waiting, by queue.", "# TYPE gate_queue_depth gauge"]
    try:
        depths = dispatcher(settings()).depth()
    except Exception:  # noqa: BLE001 - Redis down: report what the record knows, not an error page
        depths = {}
    lines += [f'gate_queue_depth{{queue="{name}"}} {count}' for name, count in depths.items()]
    latency = db().execute("select count(*), coalesce(sum((julianday(decided_at) - julianday(created_at)) * 86400), 0),"
                           " count(probe_seconds), coalesce(sum(probe_seconds), 0) from uploads"
                           " where decided_at is not null").fetchone()
    lines += ["# HELP gate_scan_latency_seconds From delivery recorded to final state.",
              "# TYPE gate_scan_latency_seconds summary",
              f"gate_scan_latency_seconds_count {latency[0]}", f"gate_scan_latency_seconds_sum {latency[1]:.3f}",
              "# HELP gate_probe_seconds Probe worker time (render and embed) per probed LoRA.",
              "# TYPE gate_probe_seconds summary",
              f"gate_probe_seconds_count {latency[2]}", f"gate_probe_seconds_sum {latency[3]:.3f}"]
    try:
        lines += telemetry.prometheus_lines(telemetry.workers(dispatcher(settings()).queues.connection))
    except Exception:  # noqa: BLE001 - Redis down, or in-process jobs: no workers to report
        pass
    owed = db().execute("select count(*) from outbox where state = 'pending'").fetchone()[0]
    lines += ["# HELP gate_outbox_pending Messages owed to hubs, not yet acknowledged.",
              "# TYPE gate_outbox_pending gauge", f"gate_outbox_pending {owed}"]
    return Response("\n".join(lines) + "\n", mimetype="text/plain; version=0.0.4")
