"""What the service benchmarks share: a free loopback port, and waiting for a server to answer."""

from __future__ import annotations

import socket
import time
import urllib.request


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(check, timeout: float, what: str) -> None:
    """Call `check` until it returns true (an exception counts as not yet); RuntimeError after `timeout` s."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if check():
                return
        except Exception:  # noqa: BLE001 - not up yet
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{what} within {timeout} s")


def answers(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=1) as answer:
        return answer.status == 200
