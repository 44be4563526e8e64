"""What an operator asks first: where is this upload, and how are the queues doing."""

from __future__ import annotations

from gate import telemetry
from gate.config import Settings
from gate.pipeline.progress import progress
from gate.queues import Queues
from gate.record.uploads import get_upload, status


def upload_report(db, upload_id: str, queues: Queues | None = None) -> dict:
    """One upload's status (as the hub sees it, progress included) and its journal."""
    upload = get_upload(db, upload_id)
    report = {**status(upload), "filename": upload["filename"], "title": upload["title"],
              "generation": upload["generation"], "attempts": upload["attempts"]}
    if (scan := progress(db, upload, queues)) is not None:
        report["progress"] = scan
    report["journal"] = [
        f"{e['at']}  {e['actor']}: {e['action']} ({e['from_state'] or '-'} -> {e['to_state']}) {e['detail']}"
        for e in db["upload_events"].rows_where("upload_id = ?", [upload_id], order_by="id")]
    return report


def report_lines(report: dict) -> list[str]:
    """An upload's report for a person: the facts in aligned lines, reasons and matches as sentences and a
    table, the journal last."""
    facts = [("upload", report["id"]), ("file", report["filename"]), ("title", report["title"]),
             ("hub model", " / ".join(str(v) for v in (report["model_id"], report["version_id"]) if v)),
             ("state", report["state"] + (f", verdict {report['verdict']}" if report["verdict"] else "")),
             ("received", report["created_at"]), ("decided", report["decided_at"]),
             ("probe set", report["probe_set"]), ("attempts", report["attempts"])]
    if scan := report.get("progress"):
        estimate = f", about {scan['estimate_seconds']:.0f} s left" if "estimate_seconds" in scan else ""
        facts.append(("stage", f"{scan['stage']} for {scan['seconds_in_stage']:.0f} s"
                               f"{', ' + str(scan['ahead']) + ' ahead' if 'ahead' in scan else ''}{estimate}"))
    if error := report.get("error"):
        facts.append(("error", f"{error['code']}: {error['message']}"))
    lines = [f"{label:<10} {value}" for label, value in facts if value not in (None, "")]
    if report["reasons"]:
        lines += ["reasons:"] + [f"  - {reason['message']}" for reason in report["reasons"]]
    if report["matches"]:
        lines += ["matches:", f"  {'character':<24} {'renders':>8} {'score':>6} {'lift':>6}  best reference"]
        lines += [f"  {m.get('name') or m['character']:<24} {m['matched']:>3} of {m['rendered']:<2} "
                  f"{m['best_score']:>6.3f} {m['best_lift']:>6.3f}  {m.get('best_reference') or ''}"
                  for m in report["matches"]]
    return lines + ["journal:"] + [f"  {line}" for line in report["journal"]]


def overview(settings: Settings, db) -> dict:
    """Uploads by state, the outbox, and (with Redis) queue depths and workers."""
    report: dict = {"record": str(settings.db_path)}
    for row in db.query("select state, count(*) as n from uploads group by state order by state"):
        report[f"uploads {row['state']}"] = row["n"]
    report["outbox pending"] = db.execute("select count(*) from outbox where state = 'pending'").fetchone()[0]
    if not settings.redis_url:
        report["jobs"] = "in-process (no REDIS_URL)"
        return report
    from gate.queues import RedisQueues

    queues = RedisQueues(settings.redis_url)
    health = queues.health()
    report["redis"] = health
    if health == "ok":
        from rq import Worker

        for name, depth in queues.depth().items():
            report[f"queue {name}"] = depth
        stats = telemetry.workers(queues.connection)
        report["workers"] = [_worker_line(w.name, w.get_state(), w.queue_names(), stats.get(w.name, {}))
                             for w in Worker.all(connection=queues.connection)]
    return report


def _worker_line(name: str, state: str, queue_names: list[str], stats: dict) -> str:
    """A worker as `gate status` shows it: its state and queues, jobs done, registry version and cache size."""
    counters = stats.get("counters", {})
    jobs = sum(v for k, v in counters.items() if k.startswith("jobs:"))
    facts = [f"{jobs:g} jobs"] if stats else []
    if stats.get("registry_version"):
        facts.append(f"registry {stats['registry_version']}")
    if "cache_bytes" in stats:
        facts.append(f"cache {stats['cache_bytes'] / 1e6:.1f} MB")
    return f"{name}: {state} on {','.join(queue_names)}" + (f" ({', '.join(facts)})" if facts else "")
