"""Rights holders' surface: pages (session) and a JSON API (token) over their own characters and matches."""

from __future__ import annotations

from flask import Blueprint, flash, g, jsonify, redirect, render_template, request, url_for

from gate.errors import GateError
from gate.registry import rights
from gate.web.auth import actor, machine, people, person, render_error
from gate.web.context import db, request_json, settings
from gate.web.limits import takes_body

bp = Blueprint("rights", __name__, template_folder="templates")
MAX_FILES = 64
MAX_REFERENCE = 20 * 1024 * 1024
REFERENCES_BODY = MAX_FILES * MAX_REFERENCE + 1024 * 1024  # every reference at its largest, and the form around them


def _references() -> list[tuple[str, bytes]]:
    files = request.files.getlist("reference")[:MAX_FILES + 1]
    if len(files) > MAX_FILES:
        raise GateError(f"at most {MAX_FILES} reference images", "registry_invalid")
    return [(f.filename or "reference", f.read(MAX_REFERENCE + 1)) for f in files if f]


# --- pages -------------------------------------------------------------------------------------------------

@bp.get("/rights")
@people("characters.own")
def overview():
    """My characters and the uploads that matched them."""
    me = person()
    return render_template("review/rights.html", characters=rights.own_characters(db(), me["party"]),
                           matches=rights.matches(db(), me["party"]),
                           image_matches=rights.image_matches(db(), me["party"]))


@bp.post("/rights/characters")
@takes_body(REFERENCES_BODY)
@people("characters.own")
def register_page():
    """Register a character with reference images (a multipart form)."""
    me = person()
    character = rights.register(db(), settings(), actor(me), me["party"], name=request.form.get("name", ""),
                                policy=request.form.get("policy", "quarantine"), references=_references(),
                                aliases=request.form.get("aliases", ""),
                                description=request.form.get("description", ""))
    flash(f"{character.name} registered")
    return redirect(url_for("rights.overview"))


@bp.post("/rights/characters/<character_id>")
@people("characters.own")
def update_page(character_id: str):
    """Change aliases and policy, or retire."""
    me = person()
    if request.form.get("retire"):
        rights.retire(db(), actor(me), me["party"], character_id, request.form.get("reason", ""))
    else:
        rights.update(db(), settings(), actor(me), me["party"], character_id, aliases=request.form.get("aliases"),
                      policy=request.form.get("policy") or None, reason=request.form.get("reason", ""))
    flash(f"{character_id} updated")
    return redirect(url_for("rights.overview"))


def _error(exc: GateError):
    """JSON for the API, a page for people."""
    if request.path.startswith("/v1/"):
        return jsonify(error=exc.to_dict()), exc.http_status
    return render_error(exc)


bp.register_error_handler(GateError, _error)


# --- JSON API (Authorization: Bearer <token> of a rights_holder account) ----------------------------------

@bp.get("/v1/characters")
@machine("characters.own")
def api_list():
    return jsonify(characters=[c.to_dict() for c in rights.own_characters(db(), g.account["party"])])


@bp.post("/v1/characters")
@takes_body(REFERENCES_BODY)
@machine("characters.own")
def api_register():
    """multipart: name, policy, aliases (comma-separated), description, and `reference` files."""
    character = rights.register(db(), settings(), actor(g.account), g.account["party"],
                                name=request.form.get("name", ""), policy=request.form.get("policy", "quarantine"),
                                references=_references(), aliases=request.form.get("aliases", ""),
                                description=request.form.get("description", ""))
    return jsonify(character.to_dict()), 201


@bp.get("/v1/characters/<character_id>")
@machine("characters.own")
def api_show(character_id: str):
    return jsonify(rights.own_character(db(), g.account["party"], character_id).to_dict())


@bp.patch("/v1/characters/<character_id>")
@machine("characters.own")
def api_update(character_id: str):
    """JSON: any of aliases (list), policy, description, reason."""
    body = request_json()
    if not isinstance(body, dict):
        raise GateError("send a JSON object", "body_invalid")
    policy, description = body.get("policy"), body.get("description")
    if policy is not None and not isinstance(policy, str) or description is not None \
            and not isinstance(description, str):
        raise GateError("policy and description are strings", "registry_invalid")
    character = rights.update(db(), settings(), actor(g.account), g.account["party"], character_id,
                              aliases=body.get("aliases"), policy=policy, description=description,
                              reason=str(body.get("reason") or "")[:2000])
    return jsonify(character.to_dict())


@bp.delete("/v1/characters/<character_id>")
@machine("characters.own")
def api_retire(character_id: str):
    return jsonify(rights.retire(db(), actor(g.account), g.account["party"], character_id).to_dict())


@bp.get("/v1/characters/<character_id>/matches")
@machine("characters.own")
def api_matches(character_id: str):
    return jsonify(matches=rights.matches(db(), g.account["party"], character_id),
                   image_matches=rights.image_matches(db(), g.account["party"], character_id))
