"""The web gate's application factory: defaults, then environment, then the test mapping."""

from __future__ import annotations

from flask import Flask, jsonify
from werkzeug.exceptions import HTTPException

from gate.config import load_settings
from gate.errors import GateError

# HTTP status for the library's error codes that are the client's doing; the rest are 400.
STATUS = {"signature_missing": 401, "signature_malformed": 401, "signature_expired": 401,
          "signature_mismatch": 401, "webhook_secret_mismatch": 401, "worker_token_mismatch": 401,
          "upload_not_found": 404, "not_configured": 503, "body_too_large": 413,
          # issue 7: accounts, the queue, disputes, rights holders
          "unauthenticated": 401, "token_missing": 401, "token_invalid": 401, "login_failed": 401,
          "account_disabled": 403, "forbidden": 403, "csrf_failed": 403, "character_not_found": 404,
          "account_not_found": 404, "claimed_by_other": 409, "not_in_queue": 409, "dispute_exists": 409,
          "dispute_not_allowed": 409, "login_throttled": 429}
STATUS.update({"delivery_not_found": 404})  # Hugging Face webhooks and URL uploads


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

    from gate.web import api, deliveries, health, hooks, huggingface, internal, record

    record.init_app(app)
    app.register_blueprint(hooks.bp)
    app.register_blueprint(api.bp)
    app.register_blueprint(health.bp)
    app.register_blueprint(internal.bp)
    from gate.web import auth, disputes, review, rights  # issue 7: moderators, hubs' disputes, rights holders
    for surface in (auth, review, disputes, rights):
        app.register_blueprint(surface.bp)
    app.register_blueprint(huggingface.bp)
    app.register_blueprint(deliveries.bp)

    @app.errorhandler(GateError)
    def gate_error(exc: GateError):
        return jsonify(error=exc.to_dict()), STATUS.get(exc.code, 400)

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        code = (exc.name or "error").lower().replace(" ", "_")
        return jsonify(error={"code": code, "message": exc.description}), exc.code

    return app
