"""Decision callbacks: deliver the outbox to the hub's callback URL, signed, retried until acknowledged.

A message is acknowledged by any 2xx answer. Anything else (a refusal, a timeout, a hub that is down) is
retried with exponential backoff capped at an hour; the message stays in the outbox until then. The body
is signed like hub uploads (X-Gate-Signature, Stripe style) with callback_secret, else upload_secret.
"""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta

from gate.config import Settings
from gate.hubs import signatures
from gate.record.outbox import pending_messages

log = logging.getLogger(__name__)
TIMEOUT_SECONDS = 5
MAX_BACKOFF_SECONDS = 3600


def backoff(attempts: int) -> float:
    """Seconds before the next attempt after `attempts` failed ones: 2, 4, 8, ... capped at an hour."""
    return float(min(2 ** attempts, MAX_BACKOFF_SECONDS))


def _post(url: str, body: bytes, secret: str, message_id: int) -> None:
    headers = {"Content-Type": "application/json", "X-Gate-Signature": signatures.sign(body, secret),
               "X-Gate-Delivery": str(message_id), "User-Agent": "lora-gate"}
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    with urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS) as answer:
        if not 200 <= answer.status < 300:
            raise urllib.error.HTTPError(url, answer.status, "not acknowledged", answer.headers, None)


def deliver_due(settings: Settings, db, limit: int = 20) -> int:
    """Try every message that is due; returns how many were acknowledged."""
    secret = settings.callback_secret or settings.upload_secret
    if not settings.callback_url or not secret:
        return 0  # no hub to tell yet: messages wait in the outbox
    delivered = 0
    for message in pending_messages(db, limit=limit):
        body = json.dumps({"id": message["id"], "event": message["event"], "upload_id": message["upload_id"],
                           "created_at": message["created_at"], "data": json.loads(message["payload"])},
                          ensure_ascii=False).encode()
        now = datetime.now(UTC)
        try:
            _post(settings.callback_url, body, secret, message["id"])
        except (OSError, urllib.error.URLError, ValueError) as exc:
            attempts = (message["attempts"] or 0) + 1
            retry_at = now + timedelta(seconds=backoff(attempts))
            db["outbox"].update(message["id"], {"attempts": attempts, "last_error": str(exc)[:300],
                                                "next_attempt_at": retry_at.isoformat(timespec="milliseconds")})
            log.warning("callback %s for %s not acknowledged (%s); retry at %s", message["id"],
                        message["upload_id"], exc, retry_at.isoformat(timespec="seconds"))
            continue
        db["outbox"].update(message["id"], {"state": "delivered", "attempts": (message["attempts"] or 0) + 1,
                                            "delivered_at": now.isoformat(timespec="milliseconds")})
        delivered += 1
    return delivered
