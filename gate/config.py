"""Settings: built-in defaults, then a TOML file named by GATE_CONFIG, then GATE_* environment variables.

This is the one place configuration is read; every setting is documented in the README's table.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from gate.errors import GateError
from gate.intake.limits import IntakeLimits, MiB

REPO_ROOT = Path(__file__).resolve().parent.parent



def choice(default: str, among: tuple[str, ...]) -> Any:
    """A setting with a fixed set of values, checked when the configuration loads (a typo stops the start)."""
    assert default in among, default
    return field(default=default, metadata={"choices": among})


def pattern(default: str, regex: str, allowed: str) -> Any:
    """A setting whose values follow a pattern (`allowed` says it in words for the error message)."""
    return field(default=default, metadata={"pattern": regex, "allowed": allowed})


@dataclass(frozen=True)
class RepeatSettings:
    """Repeat infringement: when a re-upload's weight fingerprint matches a blocked or quarantined LoRA, and
    when an uploader's earlier blocks route their uploads to quarantine."""

    # Whole-LoRA ΔW cosine at or above which an upload is a near-duplicate (distinct fixture LoRAs: <= 0.12).
    similarity: float = 0.9
    # Share of a flagged LoRA's ΔW found in an upload, module by module (a merge; distinct fixtures: <= 0.15).
    containment: float = 0.5
    # The index's coarse cut on global vectors before the exact re-rank (distinct fixtures: <= 0.24).
    candidates: float = 0.35
    # Uploads of an uploader with at least this many blocked uploads go to quarantine; 0 turns the policy off.
    offender_blocks: int = 0


@dataclass(frozen=True)
class ReviewSettings:
    """The moderators' side: sessions, claims on queue items, dispute deadlines."""

    # Signs people's session cookies; unset, a random key is made once and kept in DATA_DIR/secret_key.
    secret_key: str = ""
    # How long a moderator's claim on a queue item holds before another may take it.
    claim_minutes: int = 15
    # How long the gate gives itself to answer a dispute (shown on the queue and sent to the hub).
    dispute_deadline_days: int = 7
    # Session cookies only over HTTPS (set it in production; tests and local runs use plain HTTP).
    session_cookie_secure: bool = False
    # How long a person stays signed in.
    session_hours: int = 12
    # Failed sign-ins allowed per username and client address, and per client address, in each window.
    login_max_failures: int = 5
    login_max_failures_per_address: int = 50
    login_window_minutes: int = 15


@dataclass(frozen=True)
class HuggingFaceSettings:
    """The Hugging Face Hub: its webhooks, where weights are fetched from, and what a block does to a repo."""

    # The secret the Hub sends verbatim in X-Webhook-Secret; unset, POST /webhooks/huggingface answers 503.
    webhook_secret: str = ""
    # The Hub's API (or a self-hosted hub / mirror); repos are listed and files fetched from here.
    endpoint: str = "https://huggingface.co"
    # A token that can read the repos (and, for block_action, change their settings and open discussions).
    token: str = ""
    # Most weight files taken from one revision; more is refused (too_many_files).
    max_files: int = 20
    # What a final block does to the Hub repo: "" (nothing, the default), "private" or "gated"
    # (gate/hubs/enforcement.py BLOCK_ACTIONS; a typo must not quietly turn enforcement off).
    block_action: str = choice("", among=("", "private", "gated"))


@dataclass(frozen=True)
class FetchLimits:
    """Bounds on fetching weights from a hub or a URL, enforced while streaming, not only from headers."""

    max_bytes: int = 4096 * MiB
    timeout_seconds: float = 600.0
    connect_timeout_seconds: float = 10.0
    max_redirects: int = 5
    # URL uploads name hosts the uploader chose: only public addresses are fetched from unless this is set
    # (a hub that serves its files from its own network; the tests' local file server).
    allow_private_addresses: bool = False
    # URL uploads only from these hosts (comma-separated; "*.example.com" for subdomains), redirects included;
    # unset, any public host. A hub that serves its files from a CDN names it here.
    allowed_hosts: str = ""


@dataclass(frozen=True)
class HttpLimits:
    """What `gate serve`'s server (gate.web.server) allows a client, so hostile ones cannot hold it or its disk."""

    # From a connection's start (or its previous answer) to the end of a request's head.
    head_seconds: float = 10.0
    # The longest wait for a body's next bytes or for a client to take an answer; a body must also average
    # min_rate bytes a second once its first idle_seconds are up.
    idle_seconds: float = 30.0
    min_rate: int = 16 * 1024
    connections: int = 1024
    # Connections from one address; at the cap the oldest one still sending its head is dropped. Behind a
    # reverse proxy every client has the proxy's address: raise it there.
    connections_per_address: int = 64
    # Bodies over buffered_body stream to the app on their own threads, this many at once from one address.
    streams_per_address: int = 2
    buffered_body: int = 1 * MiB
    max_head: int = 64 * 1024
    # After an answer sent before its body was read, the rest is read and dropped this long, so the client
    # reads the answer instead of a reset.
    linger_seconds: float = 2.0
    # Memory for bodies whose signature can only be checked at their end (v1: an HMAC over the body). They are
    # never written to disk before it is checked; one may be at most half of this, and larger uploads are
    # signed over their sha256 (v2), which is checked on the head.
    unverified_bytes: int = 64 * MiB
    unverified_per_address: int = 2


DEMO = "demo"


@dataclass(frozen=True)
class Settings:
    """Everything the gate can be told; production needs its models named, the demo profile runs on the
    embedded fixture world."""

    # "production" never falls back to the fixture world; "demo" (`make run`, the tests) takes its models,
    # calibration and characters from world_dir wherever nothing else is configured.
    profile: str = choice("production", among=("production", DEMO))
    data_dir: Path = REPO_ROOT / "var"
    world_dir: Path = REPO_ROOT / "fixtures" / "world"
    # Models for the probe engine; required in production, the fixture world's in the demo profile.
    base_model_dir: Path | None = None
    embedder_dir: Path | None = None
    # The embedder that screens images (datasets, previews, galleries): drawings and photos rather than the base
    # model's renders. Unset: the fixture world's image embedder in the demo profile, else embedder_dir's model.
    image_embedder_dir: Path | None = None
    probe_set: str = "fixture-v3"
    # What probes/render.py pick_device hands to torch.device; unset, CUDA where present, else CPU.
    device: str = pattern("", r"(cpu|cuda(:\d+)?|mps)?", "cpu, cuda, cuda:N, mps, or unset for automatic")
    # Thresholds written by `gate calibrate`; unset means data_dir's, else (demo profile only) the world's.
    calibration: Path | None = None
    # What happens to a LoRA that cannot be probed (another family, OFT, GLoRA): a person looks at it.
    # The values are gate/detection/decisions.py Verdict's (a test holds them equal; config imports no detection).
    not_probed_verdict: str = choice("quarantine", among=("allow", "quarantine", "block"))
    # Where renders of the base model are cached across processes (default DATA_DIR/cache).
    cache_dir: Path | None = None
    # The secret hubs sign direct uploads with (X-Gate-Signature); unset, signed endpoints answer 503.
    upload_secret: str = ""
    # Redis for the job queues (also read from REDIS_URL); unset, `gate serve` runs its own scan worker process.
    redis_url: str = ""
    # The gate's own base URL as workers on other machines reach it, to fetch upload files over HTTP.
    public_url: str = ""
    # The token GPU workers present to fetch upload files (GET /internal/uploads/<id>/file); unset, disabled.
    worker_token: str = ""
    # Whether a probe worker may read the gate's files (uploads, references, previews, image sets) at the paths
    # the gate names. False on a worker of another machine: it fetches each from the gate by its sha256
    # (public_url and worker_token) into its cache, and fails a job it cannot get them for, rather than decide
    # on less evidence.
    worker_shared_disk: bool = True
    # How long one job may run before RQ stops it (seconds).
    job_timeout: int = 1800
    # How long POST /v1/images and /v1/datasets wait for their verdict before answering 202 with a status URL
    # (a small set is answered at once, 200, with its verdict). 0: always 202.
    images_wait_seconds: float = 10.0
    # Where final decisions are POSTed (signed like uploads, with callback_secret or else upload_secret).
    callback_url: str = ""
    callback_secret: str = ""
    # How hard a commit waits for the disk: "normal" (WAL, synchronous=NORMAL: an accepted delivery survives any
    # of the gate's processes dying; an OS crash or power loss can undo the last commits) or "full" (each
    # delivery's file and row are fsynced before the 202: survives power loss, at the disk's fsync latency).
    record_sync: str = choice("normal", among=("normal", "full"))
    # Reverse proxies in front of the gate that set X-Forwarded-For/-Proto/-Host: client addresses (for the
    # sign-in throttle) and the scheme of the URLs the gate hands out come from their headers. 0: none.
    proxy_hops: int = 0
    intake: IntakeLimits = field(default_factory=IntakeLimits)
    repeat: RepeatSettings = field(default_factory=RepeatSettings)
    review: ReviewSettings = field(default_factory=ReviewSettings)
    huggingface: HuggingFaceSettings = field(default_factory=HuggingFaceSettings)
    fetch: FetchLimits = field(default_factory=FetchLimits)
    http: HttpLimits = field(default_factory=HttpLimits)

    @property
    def db_path(self) -> Path:
        return self.data_dir / "gate.db"

    @property
    def references_dir(self) -> Path:
        return self.data_dir / "references"

    @property
    def base_render_cache(self) -> Path:
        return (self.cache_dir or self.data_dir / "cache") / "base"

    @property
    def demo(self) -> bool:
        return self.profile == DEMO

    @property
    def base_model(self) -> Path:
        return self._model(self.base_model_dir, "base", "GATE_BASE_MODEL_DIR", "its base model (a diffusers "
                           "pipeline directory)")

    @property
    def embedder(self) -> Path:
        return self._model(self.embedder_dir, "embedder", "GATE_EMBEDDER_DIR", "its image embedder (a "
                           "transformers vision model directory)")

    @property
    def image_embedder(self) -> Path:
        if self.image_embedder_dir:
            return self.image_embedder_dir
        if self.demo and not self.embedder_dir and (self.world_dir / "image_embedder").is_dir():
            return self.world_dir / "image_embedder"
        return self.embedder

    def _model(self, configured: Path | None, world_name: str, variable: str, what: str) -> Path:
        if configured:
            return configured
        if self.demo:
            return self.world_dir / world_name
        # Outside the demo, the fixture world's toy models would "work" and match nothing real: refuse instead.
        raise ConfigError(f"{variable} is not set: a production gate needs {what}; "
                          "set GATE_PROFILE=demo to run on the fixture world")

    def require_models(self) -> tuple[Path, Path]:
        """The base model and embedder; ConfigError for a production configuration that names none."""
        return self.base_model, self.embedder

    @property
    def calibration_file(self) -> Path:
        if self.calibration:
            return self.calibration
        local = self.data_dir / "calibration.json"
        # In production a missing file is CalibrationMissing ("run gate calibrate"), never the world's thresholds.
        return local if local.exists() or not self.demo else self.world_dir / "calibration.json"


class ConfigError(GateError):
    code = "config_invalid"


def _coerce(value: object, kind: str, variable: str) -> object:
    """Convert a file or environment value to the field's annotated type (annotations are strings here)."""
    if value in ("", None) and "None" in kind:
        return None
    try:
        if "Path" in kind:
            return Path(str(value)).expanduser()
        if kind == "int":
            return int(value)
        if kind == "float":
            return float(value)
        if kind == "bool":
            return _bool(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{variable}: expected {kind}, got {value!r}") from None
    return value


def _bool(value: object) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(text)


def _apply(obj, values: dict, env_prefix: str, read_env: bool = True):
    """Return obj with values from a mapping (the TOML file) and then from GATE_* variables applied."""
    changes = {}
    for f in fields(obj):
        current = getattr(obj, f.name)
        env_name = f"{env_prefix}{f.name.upper()}"
        if dataclasses.is_dataclass(current):
            changes[f.name] = _apply(current, values.get(f.name, {}), f"{env_name}_", read_env)
            continue
        if f.name in values:
            changes[f.name] = _coerce(values[f.name], f.type, env_name)
        if read_env and env_name in os.environ:
            changes[f.name] = _coerce(os.environ[env_name], f.type, env_name)
    return dataclasses.replace(obj, **changes)


def _validate(obj, env_prefix: str = "GATE_") -> None:
    """Check every fixed-choice and patterned setting, nested groups too; the error names the variable."""
    for f in fields(obj):
        value, env_name = getattr(obj, f.name), f"{env_prefix}{f.name.upper()}"
        if dataclasses.is_dataclass(value):
            _validate(value, f"{env_name}_")
        elif "choices" in f.metadata and value not in f.metadata["choices"]:
            allowed = ", ".join(c or "'' (unset)" for c in f.metadata["choices"])
            raise ConfigError(f"{env_name}={value!r} is not allowed; use one of: {allowed}")
        elif "pattern" in f.metadata and not re.fullmatch(f.metadata["pattern"], str(value)):
            raise ConfigError(f"{env_name}={value!r} is not allowed; use {f.metadata['allowed']}")


def load_settings(overrides: dict | None = None) -> Settings:
    """Load settings: defaults, then the GATE_CONFIG file, then GATE_* variables, then `overrides` (tests)."""
    file_values: dict = {}
    config_path = os.environ.get("GATE_CONFIG")
    if config_path:
        try:
            file_values = tomllib.loads(Path(config_path).read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read GATE_CONFIG={config_path}: {exc}") from None
    settings = _apply(Settings(), file_values, "GATE_")
    if not settings.redis_url and os.environ.get("REDIS_URL"):  # the conventional name, as the issue asks
        settings = dataclasses.replace(settings, redis_url=os.environ["REDIS_URL"])
    if overrides:
        settings = _apply(settings, overrides, "GATE_", read_env=False)
    _validate(settings)
    return settings
