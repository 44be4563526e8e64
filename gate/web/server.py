"""`gate serve`'s HTTP server: waitress, held to the gate's own limits and answering in the gate's own errors.

Waitress refuses a body over its `max_request_body_size` (1 GiB unless told) as soon as the headers declare it,
with a text/plain page. The gate sets that limit to its own (`GATE_INTAKE_MAX_FILE_BYTES` plus the multipart
envelope), and makes waitress's refusals JSON with the gate's codes, so a hub sees one error format whichever
layer refused: `413 body_too_large` for a declared Content-Length over the limit, before any of the body is
read.
"""

from __future__ import annotations

import json

from flask import Flask

# Waitress's own refusals (it has no hook for their bodies): status code -> the gate's code.
CODES = {400: "request_invalid", 413: "body_too_large", 431: "headers_too_large", 500: "server_error",
         501: "not_implemented"}


def _json_response(error, ident=None):
    """waitress.utilities.Error.to_response, as the gate's JSON error."""
    code = CODES.get(error.code, "request_invalid")
    body = json.dumps({"error": {"code": code, "message": f"{error.reason}: {error.body}"}}).encode()
    return f"{error.code} {error.reason}", [("Content-Type", "application/json")], body


def serve(app: Flask, host: str, port: int, threads: int) -> None:
    import waitress
    import waitress.utilities

    waitress.utilities.Error.to_response = _json_response
    waitress.serve(app, host=host, port=port, threads=threads, ident="lora-gate",
                   max_request_body_size=app.config["MAX_CONTENT_LENGTH"])
