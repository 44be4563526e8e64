"""The web gate's application factory: defaults, then environment, then the test mapping."""

from __future__ import annotations

from flask import Flask, jsonify
from werkzeug.exceptions import HTTPException

from gate.config import load_settings
from gate.errors import GateError
from gate.web import (
    auth,
    context,
    deliveries,
    disputes,
    health,
    huggingface,
    internal,
    review,
    rights,
    status,
    uploads,
)


def create_app(config: dict | None = None) -> Flask:
    """Build the gate's Flask app; `config` overrides settings (tests build any configuration they need)."""
    settings = load_settings(config)
    app = Flask(__name__)
    app.config["GATE_SETTINGS"] = settings
    if settings.proxy_hops:
        from werkzeug.middleware.proxy_fix import ProxyFix

        hops = settings.proxy_hops
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops, x_host=hops)
    # Room for the weights plus the multipart envelope and the hub's record.
    app.config["MAX_CONTENT_LENGTH"] = settings.intake.max_file_bytes + 4 * 1024 * 1024

    context.init_app(app)
    for surface in (uploads, status, health, internal, auth, review, disputes, rights, huggingface, deliveries):
        app.register_blueprint(surface.bp)

    @app.errorhandler(GateError)
    def gate_error(exc: GateError):
        return jsonify(error=exc.to_dict()), exc.http_status

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        code = "body_too_large" if exc.code == 413 else (exc.name or "error").lower().replace(" ", "_")
        return jsonify(error={"code": code, "message": exc.description}), exc.code

    return app
