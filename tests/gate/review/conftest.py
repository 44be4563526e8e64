"""The moderators' side on a record full of quarantined items made from real scan evidence.

Two fixture-world LoRAs are scanned with the real Scanner once (their evidence is kept in pytest's cache,
keyed by the LoRA's content, so later sessions reuse it; delete .pytest_cache to scan again), then replicated
into queue rows (fixtures/review_queue.py)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from fixtures.review_queue import JUDGED, SCANNED, all_cached, replicate, scan_all

REPO = Path(__file__).resolve().parents[3]
LORAS = REPO / "fixtures" / "world" / "loras"
PASSWORD = "correct horse battery"
PEOPLE = {"mod": "moderator", "mod2": "moderator", "op": "operator", "adm": "admin", "rh": "rights_holder"}


@pytest.fixture(scope="session")
def evidence_cache(request, tmp_path_factory) -> Path:
    store = getattr(request.config, "cache", None)  # absent under -p no:cacheprovider: scan into a temp dir
    return Path(store.mkdir("review-evidence")) if store else tmp_path_factory.mktemp("review-evidence")


def _scans(request, cache: Path, names: tuple[str, ...]) -> list:
    scanner = None if all_cached(cache, LORAS, names) else request.getfixturevalue("scanner")
    return scan_all(scanner, LORAS, cache, names)


@pytest.fixture(scope="session")
def scanned(request, evidence_cache) -> list:
    return _scans(request, evidence_cache, SCANNED)


# Beside the queue's two scans (Ultraman blocks): a character whose policy is quarantine, and a clean style.
QUARANTINED, ALLOWED = "doraemon_trigger_kohya", "style_sepia_peft"


@pytest.fixture(scope="session")
def judged(request, evidence_cache, scanned) -> dict[str, tuple[dict, Path]]:
    """The gate's own verdicts, with their evidence, on real scans: {verdict: (scan, evidence folder)} for a
    blocked, a quarantined and an allowed LoRA."""
    scans = _scans(request, evidence_cache, (*SCANNED, QUARANTINED, ALLOWED))
    judgements = [json.loads((folder / JUDGED / "scan.json").read_text()) for _, folder in scans]
    return {scan["verdict"]: (scan, folder / JUDGED) for scan, (_, folder) in zip(judgements, scans, strict=True)}


class Gate:
    """A gate app on its own record, with one account per role and helpers to act as each."""

    def __init__(self, data_dir: Path, scans, items: int, template: Gate | None = None):
        from gate.app import create_app
        from gate.config import load_settings
        from gate.record.audit import Actor
        from gate.record.db import open_db
        from gate.registry.world import World, seed_registry
        from gate.review.accounts import add_account, create_token

        self.data_dir = data_dir
        if template is not None:  # a copy of a built record: accounts and items as the template has them
            template.db.execute("pragma wal_checkpoint(truncate)")
            shutil.copytree(template.data_dir, data_dir)
            self.__dict__.update({k: v for k, v in template.__dict__.items() if k not in ("data_dir", "app", "db")})
        self.app = create_app({"data_dir": str(data_dir), "review": {"secret_key": "test-secret",
                                                                      "claim_minutes": 15}})
        self.db = open_db(data_dir / "gate.db")
        if template is not None:
            return
        seed_registry(self.db, World.load(load_settings().world_dir), data_dir / "references")
        self.ids = replicate(self.db, data_dir, scans, items)
        setup = Actor("setup", "shell")
        self.rights_holder = self.db.execute("select rights_holder from characters order by id limit 1").fetchone()[0]
        for username, role in PEOPLE.items():
            add_account(self.db, setup, username, role, PASSWORD,
                        self.rights_holder if role == "rights_holder" else None)
        add_account(self.db, setup, "hub1", "hub", party="civitai-test")
        self.tokens = {"hub": create_token(self.db, setup, "hub1")[0], "rights_holder": create_token(self.db, setup,
                                                                                                     "rh")[0]}
        self.own_character = self.db.execute("select id from characters where rights_holder = ? order by id limit 1",
                                             [self.rights_holder]).fetchone()[0]

    def client(self, username: str | None = None):
        client = self.app.test_client()
        if username:
            login(client, username)
        return client

    def item_for_hub(self, hub: str = "civitai-test", skip: int = 0) -> str:
        return self.db.execute("select id from uploads where hub = ? and review_status = 'quarantined' "
                               "order by id limit 1 offset ?", [hub, skip]).fetchone()[0]


def csrf_of(client) -> str:
    with client.session_transaction() as session:
        return session.get("csrf", "")


def login(client, username: str, password: str = PASSWORD):
    page = client.get("/login")
    token = re.search(r'name="csrf" value="([^"]+)"', page.get_data(as_text=True)).group(1)
    answer = client.post("/login", data={"username": username, "password": password, "csrf": token})
    assert answer.status_code == 302, answer.get_data(as_text=True)[:500]
    return answer


@pytest.fixture(scope="session")
def gate_template(tmp_path_factory, scanned) -> Gate:
    """Built once (accounts' password hashes are slow on purpose); each test gets a copy."""
    return Gate(tmp_path_factory.mktemp("gate-template") / "data", scanned, 12)


@pytest.fixture
def gate(tmp_path, scanned, gate_template) -> Gate:
    return Gate(tmp_path / "data", scanned, 12, template=gate_template)
