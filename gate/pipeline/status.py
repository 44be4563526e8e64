"""What an operator asks first: where is this upload, and how are the queues doing."""

from __future__ import annotations

import json

from gate.config import Settings
from gate.record.uploads import get_upload, status


def upload_report(db, upload_id: str) -> dict:
    """One upload's status (as the hub sees it) and its journal."""
    upload = get_upload(db, upload_id)
    report = {**status(upload), "generation": upload["generation"], "attempts": upload["attempts"],
              "created_at": upload["created_at"], "decided_at": upload["decided_at"]}
    report["journal"] = [
        f"{e['at']}  {e['actor']}: {e['action']} ({e['from_state'] or '-'} -> {e['to_state']}) {e['detail']}"
        for e in db["upload_events"].rows_where("upload_id = ?", [upload_id], order_by="id")]
    report["reasons"] = json.dumps(report["reasons"], ensure_ascii=False)
    return report


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
        report["workers"] = [f"{w.name}: {w.get_state()} on {','.join(w.queue_names())}"
                             for w in Worker.all(connection=queues.connection)]
    return report
