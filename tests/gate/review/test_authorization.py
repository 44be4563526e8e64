"""Every moderation endpoint against every role: allowed or denied, as the role table says.

People present their session (after signing in), machines their bearer token; a rights holder has both.
Denied means: a page sends the anonymous (and machines, which have no session) to /login, and answers 403
to a signed-in person without the role; the JSON API answers 401 without a token and 403 with the wrong one."""

from __future__ import annotations

import io

import pytest

from tests.gate.review.conftest import Gate, csrf_of

ROLES = ("anonymous", "moderator", "operator", "admin", "rights_holder", "hub")
USER = {"moderator": "mod", "operator": "op", "admin": "adm", "rights_holder": "rh"}
QUEUE = {"moderator", "operator", "admin"}

# (name, kind, method, path template, body builder, roles allowed)
ENDPOINTS = [
    ("queue", "page", "GET", "/queue", None, QUEUE),
    ("queue filtered", "page", "GET", "/queue?sort=score&hub=hf-test", None, QUEUE),
    ("item", "page", "GET", "/queue/{item}", None, QUEUE),
    ("evidence image", "page", "GET", "/queue/{item}/evidence/00_render.png", None, QUEUE),
    ("claim", "page", "POST", "/queue/{item}/claim", lambda g: {}, QUEUE),
    ("decide", "page", "POST", "/queue/{item}/decide", lambda g: {"action": "block", "reason": "matrix"}, QUEUE),
    ("bulk", "page", "POST", "/queue/bulk", lambda g: {"action": "allow", "reason": "matrix", "hub": "none"}, QUEUE),
    ("bulk confirm", "page", "POST", "/queue/bulk/confirm", lambda g: {"action": "allow", "reason": "m", "id": []},
     QUEUE),
    ("audit page", "page", "GET", "/audit", None, {"admin"}),
    ("audit export csv", "page", "GET", "/audit/export.csv", None, {"admin"}),
    ("audit export json", "page", "GET", "/audit/export.json", None, {"admin"}),
    ("rights page", "page", "GET", "/rights", None, {"rights_holder"}),
    ("rights register", "page", "POST", "/rights/characters", lambda g: {
        "name": "Matrix Hero", "policy": "quarantine", "reference": [(io.BytesIO(g.reference), "r.png")]},
     {"rights_holder"}),
    ("rights update", "page", "POST", "/rights/characters/{own}", lambda g: {"aliases": "A", "policy": "block"},
     {"rights_holder"}),
    ("dispute", "api", "POST", "/v1/uploads/{hub_item}/dispute", lambda g: {"statement": "mine"}, {"hub"}),
    ("characters list", "api", "GET", "/v1/characters", None, {"rights_holder"}),
    ("character show", "api", "GET", "/v1/characters/{own}", None, {"rights_holder"}),
    ("character update", "api", "PATCH", "/v1/characters/{own}", lambda g: {"aliases": ["B"]}, {"rights_holder"}),
    ("character matches", "api", "GET", "/v1/characters/{own}/matches", None, {"rights_holder"}),
    ("character register", "api", "POST", "/v1/characters", lambda g: {
        "name": "Api Hero", "reference": [(io.BytesIO(g.reference), "r.png")]}, {"rights_holder"}),
    ("character retire", "api", "DELETE", "/v1/characters/{own}", None, {"rights_holder"}),
]


@pytest.fixture
def matrix_gate(tmp_path, scanned, gate_template) -> Gate:
    gate = Gate(tmp_path / "data", scanned, 12, template=gate_template)
    gate.reference = sorted((gate.data_dir / "references").rglob("*.png"))[0].read_bytes()
    return gate


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=[e[0] for e in ENDPOINTS])
def test_authorization_matrix(matrix_gate, endpoint, role):
    name, kind, method, template, body, allowed = endpoint
    gate = matrix_gate
    path = template.format(item=gate.ids[0], own=gate.own_character, hub_item=gate.item_for_hub())
    client = gate.client(USER[role] if role in USER else None)
    headers = {}
    if kind == "api" and role in gate.tokens:
        headers["Authorization"] = f"Bearer {gate.tokens[role]}"
    data = body(gate) if body else None
    if kind == "page":
        if method == "POST":
            data = {**(data or {}), "csrf": csrf_of(client)}
        answer = client.open(path, method=method, data=data, headers=headers,
                             content_type="multipart/form-data" if method == "POST" else None)
    else:
        multipart = method == "POST" and name == "character register"
        answer = client.open(path, method=method, headers=headers,
                             **({"data": data, "content_type": "multipart/form-data"} if multipart
                                else {"json": data} if data is not None else {}))
    status = answer.status_code
    if role in allowed:
        assert status < 400 and not (status == 302 and "/login" in answer.headers.get("Location", "")), \
            (status, answer.get_data(as_text=True)[:300])
    elif kind == "page":
        if role in USER:
            assert status == 403, status
        else:
            assert status == 302 and answer.headers["Location"].startswith("/login"), status
    else:
        assert status == (403 if role in gate.tokens else 401), (status, answer.get_data(as_text=True)[:200])
