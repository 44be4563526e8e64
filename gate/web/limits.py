"""How large a body each route takes, declared on its view. Every other route takes at most `DEFAULT_BODY`.

The limit is the gate's own, whatever serves it: `gate serve`'s server refuses a larger declared body on the
request's head, before a byte of it is read (gate.web.server), and Flask holds every request to it too
(`request.max_content_length`), for bodies sent chunked and under any other WSGI server.
"""

from __future__ import annotations

from collections.abc import Callable

from flask import Flask, current_app, request

from gate.config import Settings

DEFAULT_BODY = 1024 * 1024  # forms and JSON are a few kB; the JSON API reads at most 1 MiB (context.request_json)

Limit = int | Callable[[Settings], int]


def takes_body(limit: Limit):
    """Declare that a view takes bodies up to `limit` bytes (a number, or a function of the settings)."""

    def mark(view):
        view.gate_body_limit = limit
        return view

    return mark


def body_limit(app: Flask, method: str, path: str) -> int:
    """The body limit of the route `method path` answers to (DEFAULT_BODY where none matches)."""
    try:
        endpoint, _ = app.url_map.bind("gate").match(path, method)
    except Exception:  # noqa: BLE001 - no such route (404, 405, a redirect), or a path the router cannot read
        return DEFAULT_BODY
    return _limit_of(app, endpoint)


def _limit_of(app: Flask, endpoint: str | None) -> int:
    limit = getattr(app.view_functions.get(endpoint), "gate_body_limit", DEFAULT_BODY) if endpoint else DEFAULT_BODY
    return limit(app.config["GATE_SETTINGS"]) if callable(limit) else limit


def init_app(app: Flask) -> None:
    @app.before_request
    def _hold_to_limit() -> None:
        request.max_content_length = _limit_of(current_app, request.endpoint)
