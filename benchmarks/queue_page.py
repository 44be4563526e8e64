"""Benchmark: the moderators' /queue page with 100,000 items in the record, in server time.

The items are quarantined uploads made from real scan evidence (fixtures/review_queue.py: fixture-world
LoRAs scanned once with the real Scanner, cached in var/cache/review-evidence), replicated with varied hubs,
uploaders and ages. Each case is a full GET of the page through the Flask app (routing, the session, the
queries, the template): server time, no network. The baseline, in the same run on the same record: the same
page's query with LIMIT/OFFSET instead of a keyset, the way pagination is usually first written.

    python -m benchmarks.queue_page [--items 100000] [--repeat 15]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from gate.review import queue as review

REPO = Path(__file__).resolve().parent.parent


def _scans():
    from fixtures.review_queue import all_cached, scan_all

    cache = REPO / "var" / "cache" / "review-evidence"
    loras = REPO / "fixtures" / "world" / "loras"
    if all_cached(cache, loras):
        return scan_all(None, loras, cache)
    from gate.config import load_settings
    from gate.engines import load_scanner
    from gate.record.db import open_db
    from gate.registry.world import World, seed_registry

    print("scanning the fixture LoRAs once for their evidence (minutes on CPU; cached afterwards) ...")
    settings = load_settings({"data_dir": tempfile.mkdtemp(prefix="queue-bench-scan-")})
    db = open_db(settings.db_path)
    seed_registry(db, World.load(settings.world_dir), settings.references_dir)
    return scan_all(load_scanner(settings, db), loras, cache)


def _median_ms(fn, repeat: int) -> float:
    fn()  # warm: the first call pays for template compilation and page cache misses
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def _offset_sql(db, query: review.QueueQuery, offset: int, size: int = review.PAGE_SIZE):
    column, descending = review.SORTS[query.sort]
    clauses, params = query.where()
    direction = "desc" if descending else "asc"
    return db.query(f"select {review.QUEUE_COLUMNS} from uploads where {' and '.join(clauses)} "
                    f"order by {column} {direction}, id {direction} limit ? offset ?", [*params, size, offset])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()

    from fixtures.review_queue import replicate
    from gate.app import create_app
    from gate.config import load_settings
    from gate.record.audit import Actor
    from gate.record.db import open_db
    from gate.registry.world import World, seed_registry
    from gate.review.accounts import add_account

    scans = _scans()
    data_dir = Path(tempfile.mkdtemp(prefix="queue-bench-"))
    db = open_db(data_dir / "gate.db")
    seed_registry(db, World.load(load_settings().world_dir), data_dir / "references")
    started = time.perf_counter()
    replicate(db, None, scans, args.items, uploaders=2000)
    db.execute("analyze")
    print(f"{args.items} queued items written in {time.perf_counter() - started:.1f} s ({data_dir})")
    add_account(db, Actor("bench", "shell"), "bench", "moderator", "benchmark password")
    app = create_app({"data_dir": str(data_dir), "review": {"secret_key": "bench"}})
    client = app.test_client()
    client.get("/login")
    with client.session_transaction() as session:
        csrf = session["csrf"]
    assert client.post("/login", data={"username": "bench", "password": "benchmark password",
                                       "csrf": csrf}).status_code == 302

    top = db.execute("select review_character, count(*) from uploads group by 1 order by 2 desc").fetchone()
    cases = [
        ("first page, oldest first", review.QueueQuery(), {}),
        ("last page, oldest first", review.QueueQuery(), {"page": "last"}),
        ("first page, highest score", review.QueueQuery(sort="score"), {}),
        (f"filtered: character={top[0]}, by score", review.QueueQuery(sort="score", character=top[0]), {}),
        ("filtered: last page, uploader", review.QueueQuery(uploader="user0001"), {"page": "last"}),
        ("filtered: last page, hub", review.QueueQuery(hub="hf-test"), {"page": "last"}),
    ]
    rows = []
    for name, query, extra in cases:
        url_args = {**query.args(), **extra}
        total = review.count(db, query)

        def page(url_args=url_args):
            answer = client.get("/queue", query_string=url_args)
            assert answer.status_code == 200, answer.status_code

        def keyset(query=query, last=bool(extra)):
            review.queue_page(db, query, last=last, with_total=False)

        def offset(query=query, last=bool(extra), total=total):
            list(_offset_sql(db, query, max(0, total - review.PAGE_SIZE) if last else 0))

        rows.append((name, total, _median_ms(offset, args.repeat), _median_ms(keyset, args.repeat),
                     _median_ms(page, args.repeat)))
    print(f"\n/queue with {args.items:,} items; median of {args.repeat}, milliseconds of server time\n")
    print("| page | items matching | OFFSET query (baseline) | keyset query | whole /queue page (keyset) |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, total, off, key, whole in rows:
        print(f"| {name} | {total:,} | {off:.2f} | {key:.2f} | {whole:.1f} |")


if __name__ == "__main__":
    main()
