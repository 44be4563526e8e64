"""The moderators' pages: the queue, one item's evidence, decisions (one and bulk), claims, the audit log."""

from __future__ import annotations

from flask import Blueprint, Response, abort, flash, redirect, render_template, request, send_from_directory, url_for

from gate.errors import GateError
from gate.images import review as image_review
from gate.images.jobs import evidence_dir as image_evidence_dir
from gate.images.record import get_set, set_status
from gate.pipeline.outcome import evidence_dir
from gate.record import audit
from gate.record.uploads import get_upload
from gate.registry.images import check_image
from gate.review import queue as review
from gate.web.auth import actor, people, person, render_error
from gate.web.context import db, settings

bp = Blueprint("review", __name__, template_folder="templates")
bp.register_error_handler(GateError, render_error)


@bp.get("/")
def home():
    return redirect(url_for("review.queue"))


@bp.get("/queue")
@people("queue.view")
def queue():
    """Quarantined, disputed and escalated items: filtered, sorted, counted, a keyset page at a time."""
    query = review.QueueQuery.from_args(request.args)
    page = review.queue_page(db(), query, after=request.args.get("after"), before=request.args.get("before"),
                             last=request.args.get("page") == "last")
    choices = {name: review.facets(db(), query.status, name) for name in review.FILTERS}
    return render_template("review/queue.html", query=query, page=page, counts=review.counts(db()),
                           items=review.with_claim_state(page.items, person()["username"]), choices=choices,
                           names=review.character_names(db()),
                           sorts=review.SORTS, statuses=list(review.ReviewStatus), now=review.now_iso())


@bp.get("/queue/<upload_id>")
@people("queue.view")
def item(upload_id: str):
    """One item: the evidence side by side, the static signals, the uploader's history, its audit trail."""
    details = review.item(db(), upload_id, evidence_dir(settings(), upload_id))
    claim = review.with_claim_state([details["upload"]], person()["username"])[0]["claim"]
    return render_template("review/item.html", it=details, u=details["upload"], claim=claim,
                           back=request.args.get("back", ""), names=review.character_names(db()))


@bp.get("/queue/<upload_id>/evidence/<name>")
@people("queue.view")
def evidence(upload_id: str, name: str):
    """The evidence images (send_from_directory refuses any path outside the upload's evidence folder)."""
    get_upload(db(), upload_id)  # an id the record knows, never a path such as '..'
    if not name.endswith(".png"):
        abort(404)
    return send_from_directory(evidence_dir(settings(), upload_id), name, max_age=3600)


@bp.get("/queue/<upload_id>/preview/<int:position>")
@people("queue.view")
def preview(upload_id: str, position: int):
    """One of the hub's preview images of the upload, as stored (checked when it arrived)."""
    rows = list(db()["upload_previews"].rows_where("upload_id = ? and position = ? and path is not null",
                                                   [upload_id, position]))
    if not rows:
        abort(404)
    image = check_image(rows[0]["path"])
    return Response(image.data, mimetype=f"image/{image.format.lower()}",
                    headers={"Cache-Control": "private, max-age=3600", "X-Content-Type-Options": "nosniff"})


@bp.post("/queue/<upload_id>/claim")
@people("queue.decide")
def claim(upload_id: str):
    """Take the item for `claim_minutes`, or give it back."""
    if request.form.get("release"):
        review.release(db(), actor(person()), upload_id)
    else:
        review.claim(db(), actor(person()), upload_id, settings().review.claim_minutes)
    return redirect(url_for("review.item", upload_id=upload_id))


@bp.post("/queue/<upload_id>/decide")
@people("queue.decide")
def decide(upload_id: str):
    """Allow, block or escalate, with a reason (required)."""
    action = request.form.get("action", "")
    review.decide(db(), actor(person()), upload_id, action, request.form.get("reason", ""))
    flash(f"{upload_id}: {action} recorded")
    back = request.form.get("back", "")
    return redirect(back if back.startswith("/queue") and not back.startswith("//") else url_for("review.queue"))


@bp.post("/queue/bulk")
@people("queue.bulk")
def bulk():
    """Step one of a bulk decision: show exactly which items the filtered set holds, and ask to confirm."""
    query = review.QueueQuery.from_args(request.form)
    action = request.form.get("action", "")
    if action not in set(review.Action):
        raise review.ReviewError(f"action must be one of {', '.join(review.Action)}", "action_invalid")
    reason = review.check_reason(request.form.get("reason", ""))
    candidates = review.bulk_candidates(db(), query)
    return render_template("review/bulk_confirm.html", query=query, action=action, reason=reason,
                           items=candidates, total=review.count(db(), query), limit=review.BULK_LIMIT)


@bp.post("/queue/bulk/confirm")
@people("queue.bulk")
def bulk_confirm():
    """Step two: the confirmed items, each decided with its own audit row; skipped ones are reported."""
    ids = request.form.getlist("id")
    result = review.decide_many(db(), actor(person()), ids, request.form.get("action", ""),
                                request.form.get("reason", ""))
    flash(f"{len(result.done)} items: {request.form.get('action')} recorded"
          + (f"; {len(result.skipped)} skipped ({', '.join(sorted(set(result.skipped.values())))})"
             if result.skipped else ""))
    return redirect(url_for("review.queue", status=request.form.get("status") or None))


@bp.get("/images")
@people("queue.view")
def image_sets():
    """Quarantined image sets (training sets, generated images), oldest first."""
    return render_template("review/image_sets.html", sets=image_review.quarantined(db()),
                           names=review.character_names(db()))


@bp.get("/images/<set_id>")
@people("queue.view")
def image_set(set_id: str):
    """One set: its reasons, each matching image beside its closest reference, what was refused, the audit."""
    row = get_set(db(), set_id)
    return render_template("review/image_set.html", s=row, answer=set_status(db(), row),
                           names=review.character_names(db()), audit=audit.entries(db(), "image_set", set_id,
                                                                                    newest_first=True),
                           evidence=(image_evidence_dir(settings(), set_id) / "index.html").exists())


@bp.get("/images/<set_id>/evidence/<name>")
@people("queue.view")
def image_set_evidence(set_id: str, name: str):
    get_set(db(), set_id)
    if not name.endswith(".png"):
        abort(404)
    return send_from_directory(image_evidence_dir(settings(), set_id), name, max_age=3600)


@bp.post("/images/<set_id>/decide")
@people("queue.decide")
def decide_image_set(set_id: str):
    """Allow or block a quarantined set, with a reason (required)."""
    action = request.form.get("action", "")
    image_review.decide_set(db(), actor(person()), set_id, action, request.form.get("reason", ""))
    flash(f"{set_id}: {action} recorded")
    return redirect(url_for("review.image_sets"))


@bp.get("/audit")
@people("audit.export")
def audit_log():
    """The latest audit entries, whether the chain verifies, and the exports."""
    return render_template("review/audit.html", entries=audit.entries(db(), limit=200, newest_first=True),
                           verification=audit.verify(db()))


@bp.get("/audit/export.<fmt>")
@people("audit.export")
def audit_export(fmt: str):
    """The whole audit log as CSV or JSON, for legal requests."""
    body = audit.export(db(), fmt)
    mimetype = "text/csv" if fmt == "csv" else "application/json"
    return Response(body, mimetype=mimetype,
                    headers={"Content-Disposition": f"attachment; filename=lora-gate-audit.{fmt}"})

