"""Per-thread access to the record: one SQLite connection per request thread, kept open for the thread's life
(sqlite3 connections may not cross threads; closing one in WAL mode checkpoints the log, which cost a
delivery ~20 ms when it was done per request), and the settings the app was built with."""

from __future__ import annotations

import threading

from flask import Flask, current_app

from gate import jsontext
from gate.config import Settings
from gate.record.db import checkpoint_in_background, open_db

_local = threading.local()


def settings() -> Settings:
    return current_app.config["GATE_SETTINGS"]


def db():
    connections = _local.__dict__.setdefault("connections", {})
    path = str(settings().db_path)
    if path not in connections:
        # Request threads never checkpoint (that cost the committing delivery tens of ms); a thread does.
        connections[path] = open_db(path, settings().record_sync, autocheckpoint=False)
        checkpoint_in_background(path)
    return connections[path]


def _rollback_leftovers(exc=None) -> None:
    """A request that failed mid-transaction must not leave its thread's connection inside it."""
    for connection in _local.__dict__.get("connections", {}).values():
        if connection.conn.in_transaction:
            connection.conn.rollback()


def init_app(app: Flask) -> None:
    open_db(app.config["GATE_SETTINGS"].db_path).conn.close()  # migrations applied on start
    app.teardown_appcontext(_rollback_leftovers)


MAX_JSON_BODY = 1024 * 1024  # the JSON API's bodies are a few hundred bytes


def request_json() -> object:
    """This request's JSON body, size and nesting bounded (gate.jsontext); None when it sent none."""
    from flask import request

    if not request.content_length and not request.is_json:
        return None
    raw = request.stream.read(MAX_JSON_BODY + 1)
    if len(raw) > MAX_JSON_BODY:
        raise jsontext.JsonInvalid(f"a JSON body is at most {MAX_JSON_BODY} bytes", "body_too_large")
    return jsontext.loads(raw, "the body", "body_invalid") if raw else None
