"""Per-request access to the record: one SQLite connection per request (sqlite3 connections are not
shared across threads), and the job dispatcher the app hands accepted uploads to."""

from __future__ import annotations

from flask import Flask, current_app, g

from gate.config import Settings
from gate.db import open_db


def settings() -> Settings:
    return current_app.config["GATE_SETTINGS"]


def db():
    if "gate_db" not in g:
        g.gate_db = open_db(settings().db_path)
    return g.gate_db


def _close(exc=None) -> None:
    connection = g.pop("gate_db", None)
    if connection is not None:
        connection.conn.close()


def init_app(app: Flask) -> None:
    open_db(app.config["GATE_SETTINGS"].db_path).conn.close()  # migrations applied on start
    app.teardown_appcontext(_close)
