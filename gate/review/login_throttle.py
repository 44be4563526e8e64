"""Sign-in throttling: failed attempts are counted per (username, client address) and per client address,
in fixed windows kept in the record so every web process sees them.

Keyed on the pair, not the username alone: someone guessing a moderator's password from one address locks
that address out, not the moderator. The address-wide count catches one address trying many usernames.
Every attempt reserves its place in both counts before its password is checked (one write transaction, so
concurrent attempts cannot race past the limit); a throttled attempt is refused without hashing, so guessing
costs the guesser nothing to learn and the gate no work.
"""

from __future__ import annotations

import math
import time

from sqlite_utils import Database

from gate.config import ReviewSettings
from gate.record.db import writing
from gate.review.accounts import AuthError


class Throttled(AuthError):
    code = "login_throttled"

    def __init__(self, retry_after: int):
        minutes = max(1, math.ceil(retry_after / 60))
        super().__init__(f"too many failed sign-ins from here; try again in {minutes} minute"
                         f"{'s' if minutes > 1 else ''}")
        self.retry_after = retry_after


def _keys(username: str, address: str, settings: ReviewSettings) -> list[tuple[str, int]]:
    return [(f"{username.strip().lower()}|{address}", settings.login_max_failures),
            (address, settings.login_max_failures_per_address)]


def reserve(db: Database, username: str, address: str, settings: ReviewSettings, now: float | None = None) -> None:
    """Count this sign-in against both keys before its password is checked, or raise Throttled. Checking and
    counting are one write transaction, so concurrent attempts cannot all pass one check: with a limit of 5,
    the sixth attempt is refused however many arrive at once. A right password gives its reservation back
    (`succeeded`)."""
    now = time.time() if now is None else now
    window = settings.login_window_minutes * 60
    with writing(db):
        db.execute("delete from login_failures where window_start <= ?", [now - window])  # spent windows
        keys = _keys(username, address, settings)
        for key, limit in keys:
            row = db.execute("select failures, window_start from login_failures where key = ?", [key]).fetchone()
            if row and row[0] >= limit and now - row[1] < window:
                raise Throttled(int(math.ceil(window - (now - row[1]))))
        for key, _ in keys:
            db.execute(
                "insert into login_failures (key, failures, window_start) values (?, 1, ?) "
                "on conflict(key) do update set "
                "failures = case when ? - window_start >= ? then 1 else failures + 1 end, "
                "window_start = case when ? - window_start >= ? then ? else window_start end",
                [key, now, now, window, now, window, now])


def succeeded(db: Database, username: str, address: str, settings: ReviewSettings) -> None:
    """A right password clears the pair's count and gives the address its reservation back (other names may
    still be being guessed from it)."""
    (pair, _), (address_key, _) = _keys(username, address, settings)
    with writing(db):
        db.execute("delete from login_failures where key = ?", [pair])
        db.execute("update login_failures set failures = max(0, failures - 1) where key = ?", [address_key])
