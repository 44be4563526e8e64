"""The Hugging Face Hub: reading its webhooks, listing and fetching a repo's weights at an exact revision, and
(when configured) acting on a repo after a block.

The webhook is read from the raw JSON, leniently: huggingface_hub's WebhookPayload drops `repo.headSha` and
rejects actions it does not know, and a valid delivery must never become an error because of that.
All Hub calls go through huggingface_hub's HfApi against the configured endpoint (huggingface.co, a mirror or
a self-hosted hub); they run in jobs, never in a request thread.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from gate import jsontext
from gate.config import Settings
from gate.errors import GateError
from gate.hubs.fetch import FetchError

HUB = "huggingface"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".pkl")
CONTENT_SCOPE = "repo.content"
CONTENT_ACTIONS = ("create", "update")
REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[\w.-]{1,96}$")
SHA = re.compile(r"^[0-9a-f]{40}([0-9a-f]{24})?$")
NO_SHA = re.compile(r"^0*$")


class WebhookInvalid(GateError):
    code = "payload_invalid"


@dataclass(frozen=True)
class Webhook:
    """What a delivery asks for: a model repo's files at a revision, or nothing (ignored, with the reason)."""

    key: str
    scope: str
    action: str
    repo_type: str | None
    repo_id: str | None
    revision: str | None
    previous: str | None  # the ref's sha before the push: only files changed since then are new
    ignored: str | None


def body_key(raw: bytes) -> str:
    """The delivery key of a body that asks for nothing: the same body again is the same delivery."""
    return f"{HUB}|body|{hashlib.sha256(raw).hexdigest()}"


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


def read_webhook(raw: bytes) -> Webhook:
    """Interpret a webhook body; unknown scopes and actions are ignored (with a reason), never refused."""
    payload = jsontext.loads(raw, "the webhook body", WebhookInvalid.code)
    if not isinstance(payload, dict) or not isinstance(payload.get("event"), dict) \
            or not isinstance(payload.get("repo"), dict):
        raise WebhookInvalid("the body must be a JSON object with 'event' and 'repo' objects")
    event, repo = payload["event"], payload["repo"]
    scope, action = _text(event.get("scope")) or "", _text(event.get("action")) or ""
    repo_type, repo_id = _text(repo.get("type")), _text(repo.get("name"))
    revision = _text(repo.get("headSha"))
    # Ignored deliveries are one per body; content updates one per repo and revision, whichever hook sent them.
    key = body_key(raw)

    def ignored(reason: str) -> Webhook:
        return Webhook(key, scope, action, repo_type, repo_id, revision, None, reason)

    if scope != CONTENT_SCOPE:
        return ignored(f"scope {scope!r} is not a content update ({CONTENT_SCOPE})")
    if action not in CONTENT_ACTIONS:
        return ignored(f"action {action!r} on {CONTENT_SCOPE} adds no files")
    if repo_type != "model":
        return ignored(f"repo type {repo_type!r}: only model repos hold LoRAs")
    if not repo_id or not REPO_ID.match(repo_id):
        raise WebhookInvalid("repo.name must look like owner/name")
    if not revision:
        return ignored("the payload has no repo.headSha, so there is no exact revision to fetch")
    if not SHA.match(revision):
        raise WebhookInvalid("repo.headSha must be a hex commit id")
    return Webhook(f"{HUB}|model|{repo_id}|{revision}", scope, action, repo_type, repo_id, revision,
                   _previous(payload, revision), None)


def _previous(payload: dict, revision: str) -> str | None:
    refs = payload.get("updatedRefs")
    for ref in refs if isinstance(refs, list) else []:
        if isinstance(ref, dict) and ref.get("newSha") == revision:
            old = _text(ref.get("oldSha"))
            if old and SHA.match(old) and not NO_SHA.match(old):
                return old
    return None


# ---------------------------------------------------------------------------------------------------------
# The Hub's API

def api(settings: Settings):
    from huggingface_hub import HfApi

    return HfApi(endpoint=settings.huggingface.endpoint.rstrip("/"), token=settings.huggingface.token or False)


def hub_errors(what: str, call):
    """Run a Hub call, turning its failures into typed ones: unreachable (transient) or a clear code."""
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError

    try:
        return call()
    except RevisionNotFoundError:
        raise FetchError(f"{what}: the revision does not exist", "revision_not_found") from None
    except RepositoryNotFoundError:
        raise FetchError(f"{what}: the repo does not exist or the token cannot see it", "repo_not_found") from None
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else 0
        if status in (401, 403):
            raise FetchError(f"{what}: access denied (HTTP {status})", "hub_forbidden") from None
        if status == 404:
            raise FetchError(f"{what}: not found", "revision_not_found") from None
        if status == 429 or status >= 500 or not status:
            raise FetchError(f"{what}: the Hub answered HTTP {status}", "hub_unreachable", transient=True) from None
        raise FetchError(f"{what}: the Hub refused (HTTP {status})", "hub_error") from None
    except (ValueError, TypeError, KeyError) as exc:  # an answer that is not what the Hub sends
        raise FetchError(f"{what}: unexpected answer from the Hub ({exc})", "hub_error") from None
    except Exception as exc:
        if not _transport_error(exc):
            raise
        raise FetchError(f"{what}: the Hub is unreachable ({type(exc).__name__}: {exc})", "hub_unreachable",
                         transient=True) from None


def _transport_error(exc: Exception) -> bool:
    """Connection refused, DNS, TLS, timeouts: from the HTTP client huggingface_hub uses (httpx or requests)."""
    package = type(exc).__module__.split(".")[0]
    return isinstance(exc, OSError) or package in ("httpx", "httpx2", "httpcore", "requests", "urllib3")


@dataclass(frozen=True)
class HubFile:
    path: str
    size: int
    blob_id: str


def weight_files(settings: Settings, repo_id: str, revision: str) -> list[HubFile]:
    """The repo's weight files at exactly this revision, with their listed sizes."""
    from huggingface_hub.hf_api import RepoFile

    def listing():
        return [HubFile(entry.path, int(entry.size or 0), entry.blob_id)
                for entry in api(settings).list_repo_tree(repo_id, revision=revision, recursive=True)
                if isinstance(entry, RepoFile) and entry.path.lower().endswith(WEIGHT_SUFFIXES)]

    return hub_errors(f"{repo_id}@{revision[:12]}", listing)


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


def image_files(settings: Settings, repo_id: str, revision: str, most: int, max_bytes: int) -> list[HubFile]:
    """The repo's images at this revision (what the model card shows as its previews), the first `most` of
    those no larger than `max_bytes`, by path."""
    from huggingface_hub.hf_api import RepoFile

    def listing():
        return sorted((HubFile(entry.path, int(entry.size or 0), entry.blob_id)
                       for entry in api(settings).list_repo_tree(repo_id, revision=revision, recursive=True)
                       if isinstance(entry, RepoFile) and entry.path.lower().endswith(IMAGE_SUFFIXES)
                       and 0 < int(entry.size or 0) <= max_bytes), key=lambda f: f.path)[:most]

    return hub_errors(f"{repo_id}@{revision[:12]}", listing)


def changed_files(settings: Settings, repo_id: str, revision: str, previous: str | None) -> list[HubFile]:
    """Weight files new or changed at `revision` since `previous` (all of them when there is none)."""
    files = weight_files(settings, repo_id, revision)
    if not previous:
        return files
    try:
        before = {(f.path, f.blob_id) for f in weight_files(settings, repo_id, previous)}
    except FetchError as exc:
        if exc.transient:
            raise
        return files  # the old revision is gone (a force push): take everything at the new one
    return [f for f in files if (f.path, f.blob_id) not in before]


def card_meta(settings: Settings, repo_id: str, revision: str) -> dict:
    """The hub record for uploads from this repo: owner, and title/tags/trigger words from the model card."""
    meta = {"hub": HUB, "model_id": repo_id, "version_id": revision, "uploader": repo_id.split("/")[0]}
    info = hub_errors(f"{repo_id}@{revision[:12]}", lambda: api(settings).model_info(repo_id, revision=revision))
    card = info.card_data.to_dict() if getattr(info, "card_data", None) is not None else {}
    title = card.get("title") or card.get("model_name")
    if isinstance(title, str):
        meta["title"] = title[:500]
    tags = [t for t in (info.tags or []) if isinstance(t, str) and len(t) < 500][:500]
    if tags:
        meta["tags"] = tags
    prompt = card.get("instance_prompt")
    words = [prompt] if isinstance(prompt, str) else prompt if isinstance(prompt, list) else []
    words = [w for w in words if isinstance(w, str) and len(w) < 500][:500]
    if words:
        meta["trigger_words"] = words
    return meta


def file_url(settings: Settings, repo_id: str, revision: str, path: str) -> tuple[str, dict[str, str]]:
    """Where a file is downloaded from at exactly `revision`, and the headers that authenticate it."""
    from huggingface_hub import hf_hub_url

    url = hf_hub_url(repo_id, path, revision=revision, endpoint=settings.huggingface.endpoint.rstrip("/"))
    token = settings.huggingface.token
    return url, ({"Authorization": f"Bearer {token}"} if token else {})
