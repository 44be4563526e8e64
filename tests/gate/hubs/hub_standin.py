"""A local stand-in for the Hugging Face Hub: the ONLY stand-in in these tests, for the one part that cannot exist
here (the remote Hub). A small real HTTP server (Flask on werkzeug, in a thread) serving the endpoints that
huggingface_hub's HfApi really calls (read from its source), so the gate's code runs unchanged against it:

    GET  /api/models/<repo>/revision/<rev>        model_info (id, sha, tags, cardData)
    GET  /api/models/<repo>/tree/<rev>[/<path>]   list_repo_tree (recursive; files with oid, size, lfs)
    GET  /<repo>/resolve/<rev>/<path>             the file's bytes at exactly that revision (what hf_hub_url names)
    PUT  /api/models/<repo>/settings              update_repo_settings (recorded in `settings_received`)
    POST /api/models/<repo>/discussions           create_discussion (recorded in `discussions`), then
    GET  /api/models/<repo>/discussions/<num>     get_discussion_details

Errors are answered as the Hub does (404 with X-Error-Code RepoNotFound / RevisionNotFound / EntryNotFound), and
the server can be stopped and started again on the same port (the Hub down, then back).
"""

from __future__ import annotations

import hashlib
import threading

from flask import Flask, Response, abort, jsonify, request
from werkzeug.serving import make_server

from tests.support import free_port

DATES = "2026-01-01T00:00:00.000Z"


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _error(code: str, message: str, status: int = 404) -> Response:
    answer = jsonify(error=message)
    answer.status_code = status
    answer.headers["X-Error-Code"] = code
    return answer


class HubStandIn:
    """Repos with files per revision; records the settings changes and discussions it is sent."""

    def __init__(self, token: str = ""):
        self.repos: dict[str, dict] = {}  # repo id -> {"revisions": {sha: {path: bytes}}, "card": {}, "tags": []}
        self.settings_received: list[tuple[str, dict]] = []
        self.discussions: list[tuple[str, dict]] = []
        self.downloads: list[tuple[str, str, str]] = []
        self.fail_writes = 0  # answer the next N settings/discussion calls with 500
        self.token = token
        self.port = free_port()
        self.app = self._build()
        self.server = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def add(self, repo_id: str, revision: str, files: dict[str, bytes], card: dict | None = None,
            tags: list[str] | None = None) -> None:
        repo = self.repos.setdefault(repo_id, {"revisions": {}, "card": {}, "tags": []})
        repo["revisions"][revision] = files
        repo["card"] = card or repo["card"]
        repo["tags"] = tags or repo["tags"]

    def start(self) -> HubStandIn:
        self.server = make_server("127.0.0.1", self.port, self.app, threaded=True)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def _files(self, repo_id: str, revision: str) -> dict[str, bytes]:
        if repo_id not in self.repos:
            abort(_error("RepoNotFound", "Repository not found"))
        files = self.repos[repo_id]["revisions"].get(revision)
        if files is None:
            abort(_error("RevisionNotFound", f"Invalid rev id: {revision}"))
        return files

    def _build(self) -> Flask:
        app = Flask("hub-standin")
        hub = self

        @app.before_request
        def authorize():
            if hub.token and request.headers.get("Authorization") != f"Bearer {hub.token}":
                return _error("RepoNotFound", "Repository not found (bad token)", 401)
            return None

        @app.get("/api/models/<owner>/<name>/revision/<revision>")
        def model_info(owner, name, revision):
            repo_id = f"{owner}/{name}"
            files = hub._files(repo_id, revision)
            return jsonify(id=repo_id, sha=revision, private=False, tags=hub.repos[repo_id]["tags"],
                           cardData=hub.repos[repo_id]["card"], siblings=[{"rfilename": p} for p in files])

        @app.get("/api/models/<owner>/<name>/tree/<revision>")
        @app.get("/api/models/<owner>/<name>/tree/<revision>/<path:prefix>")
        def tree(owner, name, revision, prefix=""):
            files = hub._files(f"{owner}/{name}", revision)
            entries = []
            for path, data in sorted(files.items()):
                if prefix and not path.startswith(prefix.rstrip("/") + "/"):
                    continue
                entry = {"type": "file", "oid": git_blob_id(data), "size": len(data), "path": path}
                if not path.endswith(".md"):
                    entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data),
                                    "pointerSize": 134}
                entries.append(entry)
            return jsonify(entries)

        @app.route("/<owner>/<name>/resolve/<revision>/<path:filename>", methods=["GET", "HEAD"])
        def resolve(owner, name, revision, filename):
            files = hub._files(f"{owner}/{name}", revision)
            if filename not in files:
                return _error("EntryNotFound", f"{filename} does not exist at {revision}")
            hub.downloads.append((f"{owner}/{name}", revision, filename))
            data = files[filename]
            return Response(data, mimetype="application/octet-stream",
                            headers={"X-Repo-Commit": revision, "ETag": f'"{hashlib.sha256(data).hexdigest()}"'})

        def _write_failure():
            if hub.fail_writes:
                hub.fail_writes -= 1
                return _error("Internal", "the stand-in was told to fail", 500)
            return None

        @app.put("/api/models/<owner>/<name>/settings")
        def repo_settings(owner, name):
            if (failure := _write_failure()) is not None:
                return failure
            hub.settings_received.append((f"{owner}/{name}", request.get_json()))
            return jsonify({})

        @app.post("/api/models/<owner>/<name>/discussions")
        def create_discussion(owner, name):
            if (failure := _write_failure()) is not None:
                return failure
            hub.discussions.append((f"{owner}/{name}", request.get_json()))
            return jsonify(num=len(hub.discussions))

        @app.get("/api/models/<owner>/<name>/discussions/<int:num>")
        def discussion(owner, name, num):
            _, body = hub.discussions[num - 1]
            return jsonify(title=body["title"], num=num, author={"name": "lora-gate"}, createdAt=DATES,
                           status="open", repo={"name": f"{owner}/{name}", "type": "model"},
                           isPullRequest=False, events=[])

        return app
