"""The web gate's application factory: defaults, then environment, then the test mapping."""

from __future__ import annotations

from flask import Flask, jsonify
from werkzeug.exceptions import HTTPException

from gate.config import load_settings
from gate.errors import GateError
from gate.hubs.unverified import UnverifiedBodies
from gate.web import (
    auth,
    context,
    deliveries,
    disputes,
    health,
    huggingface,
    images,
    internal,
    limits,
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
    app.config["MAX_CONTENT_LENGTH"] = limits.DEFAULT_BODY  # routes that take more say so (gate.web.limits)

    context.init_app(app)
    limits.init_app(app)
    app.extensions["gate_unverified"] = UnverifiedBodies(settings.http.unverified_bytes,
                                                         settings.http.unverified_per_address)
    for surface in (uploads, images, status, health, internal, auth, review, disputes, rights, huggingface,
                    deliveries):
        app.register_blueprint(surface.bp)

    @app.errorhandler(GateError)
    def gate_error(exc: GateError):
        headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after else {}
        return jsonify(error=exc.to_dict()), exc.http_status, headers

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        code = "body_too_large" if exc.code == 413 else (exc.name or "error").lower().replace(" ", "_")
        return jsonify(error={"code": code, "message": exc.description}), exc.code

    return app
