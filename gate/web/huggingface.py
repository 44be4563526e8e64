"""Hugging Face webhooks: authenticated by the shared secret, recorded durably, answered at once; the fetch of
the repo's files at the pushed revision runs on the intake queue (gate.pipeline.ingest)."""

from __future__ import annotations

from flask import Blueprint, jsonify, request, url_for
from werkzeug.exceptions import RequestEntityTooLarge

from gate.errors import GateError
from gate.hubs import signatures
from gate.hubs.deliveries import DeliveryState, record_delivery
from gate.hubs.huggingface import HUB, WebhookInvalid, body_key, read_webhook
from gate.pipeline.dispatch import accept_delivery
from gate.web.context import db, settings

bp = Blueprint("huggingface", __name__)
MAX_BODY_BYTES = 1024 * 1024  # the Hub's payloads are a few KiB


def _body() -> bytes:
    if (request.content_length or 0) > MAX_BODY_BYTES:
        raise RequestEntityTooLarge(f"a webhook body is at most {MAX_BODY_BYTES} bytes")
    raw = request.stream.read(MAX_BODY_BYTES + 1)
    if len(raw) > MAX_BODY_BYTES:
        raise RequestEntityTooLarge(f"a webhook body is at most {MAX_BODY_BYTES} bytes")
    return raw


def _answer(delivery: dict, created: bool, status: int):
    return jsonify(id=delivery["id"], status=delivery["state"], reason=delivery["reason"], duplicate=not created,
                   status_url=url_for("deliveries.delivery_status", delivery_id=delivery["id"], _external=True)), status


@bp.post("/webhooks/huggingface")
def huggingface_webhook():
    """The Hub reports an event; content updates of model repos are fetched, everything else acknowledged."""
    secret = settings().huggingface.webhook_secret
    if not secret:
        raise GateError("GATE_HUGGINGFACE_WEBHOOK_SECRET is not set: this gate cannot authenticate Hub webhooks",
                        "not_configured")
    signatures.verify_shared_secret(request.headers.get("X-Webhook-Secret"), secret)
    raw = _body()
    text = raw.decode("utf-8", errors="replace")
    try:
        webhook = read_webhook(raw)
    except WebhookInvalid as exc:
        record_delivery(db(), HUB, body_key(raw), text, state=DeliveryState.INVALID,
                        error=exc)
        raise
    if webhook.ignored:
        recorded = record_delivery(db(), HUB, webhook.key, text, state=DeliveryState.IGNORED,
                                   repo_id=webhook.repo_id, revision=webhook.revision, reason=webhook.ignored)
        return _answer(recorded.delivery, recorded.created, 200)
    recorded = record_delivery(db(), HUB, webhook.key, text, repo_id=webhook.repo_id, revision=webhook.revision,
                               meta={"previous": webhook.previous, "event": f"{webhook.scope}.{webhook.action}"})
    return _answer(accept_delivery(settings(), db(), recorded), recorded.created, 202)
