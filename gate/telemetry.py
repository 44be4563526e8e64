"""Each worker's own numbers, for /metrics and `gate status`: jobs and their seconds, cache hits and misses, the
registry version it last probed against, the size of its caches.

A job adds to this process's counters (no Redis call per job); the worker's heartbeat publishes them to Redis
under its name, with the liveness key's expiry, so the gate's /metrics (which may run on another machine) reads
every live worker's and a dead worker's numbers drop out on their own.
"""

from __future__ import annotations

import json
import threading
from collections import Counter

STATS_KEY = "gate:worker:{}:stats"
_lock = threading.Lock()
_counters: Counter = Counter()
_facts: dict[str, object] = {}


def count(name: str, amount: float = 1) -> None:
    """Add to a counter: `jobs:<job>`, `seconds:<job>`, `cache_hits:<cache>`, `cache_misses:<cache>`."""
    with _lock:
        _counters[name] += amount


def note(**facts: object) -> None:
    """Set a gauge or a fact: registry_version, cache_bytes."""
    with _lock:
        _facts.update(facts)


def snapshot() -> dict:
    with _lock:
        return {"counters": dict(_counters), **_facts}


def publish(connection, name: str, queues: list[str], ttl: int) -> None:
    connection.set(STATS_KEY.format(name), json.dumps({**snapshot(), "queues": queues}), ex=ttl)


def workers(connection) -> dict[str, dict]:
    """Every live worker's published numbers, by worker name."""
    found = {}
    for key in connection.scan_iter(match=STATS_KEY.format("*"), count=500):
        key = key.decode() if isinstance(key, bytes) else key
        raw = connection.get(key)
        if raw:
            found[key.split(":")[2]] = json.loads(raw)
    return dict(sorted(found.items()))


def prometheus_lines(stats: dict[str, dict]) -> list[str]:
    """The workers' numbers in Prometheus text format, labelled by worker."""
    families = {
        "jobs": ("gate_worker_jobs_total", "counter", "Jobs a worker finished, by job.", "job"),
        "seconds": ("gate_worker_job_seconds_total", "counter", "Seconds a worker spent in jobs, by job.", "job"),
        "cache_hits": ("gate_worker_cache_hits_total", "counter", "Files a worker found in its cache.", "cache"),
        "cache_misses": ("gate_worker_cache_misses_total", "counter", "Files a worker had to fetch.", "cache"),
    }
    lines = []
    for prefix, (metric, kind, help_text, label) in families.items():
        lines += [f"# HELP {metric} {help_text}", f"# TYPE {metric} {kind}"]
        for worker, numbers in stats.items():
            for name, value in sorted(numbers.get("counters", {}).items()):
                if name.startswith(prefix + ":"):
                    lines.append(f'{metric}{{worker="{worker}",{label}="{name.split(":", 1)[1]}"}} {value:g}')
    lines += ["# HELP gate_worker_cache_bytes Bytes in a worker's file cache.", "# TYPE gate_worker_cache_bytes gauge"]
    lines += [f'gate_worker_cache_bytes{{worker="{w}"}} {n.get("cache_bytes", 0)}' for w, n in stats.items()]
    lines += ["# HELP gate_worker_registry The registry version a worker last probed against (value 1).",
              "# TYPE gate_worker_registry gauge"]
    lines += [f'gate_worker_registry{{worker="{w}",version="{n["registry_version"]}"}} 1'
              for w, n in stats.items() if n.get("registry_version")]
    return lines
