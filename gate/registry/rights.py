"""Rights holders manage their own characters, and only theirs: register with references, change aliases and
policy, retire, and see the uploads that matched. Each change is audited, and the back catalogue is screened for
the character on the catalogue queue (the web gate loads no embedder)."""

from __future__ import annotations

import json
import logging
import secrets
import tempfile
from collections.abc import Sequence
from pathlib import Path

from sqlite_utils import Database

from gate.config import Settings
from gate.record import audit
from gate.record.audit import Actor
from gate.record.db import writing
from gate.registry import characters as registry
from gate.registry.characters import Character, RegistryError

log = logging.getLogger(__name__)
MAX_NAME = 200
MAX_ALIASES = 50


def own_characters(db: Database, party: str) -> list[Character]:
    return [c for c in registry.list_characters(db, include_retired=True) if c.rights_holder == party]


def own_character(db: Database, party: str, character_id: str) -> Character:
    """A character of this rights holder; another's is reported as not found (ids are not probed across)."""
    try:
        character = registry.get_character(db, character_id)
    except RegistryError:
        character = None
    if character is None or character.rights_holder != party:
        raise RegistryError(f"no character {character_id!r}", code="character_not_found")
    return character


def _clean_aliases(aliases: Sequence[str] | str | None) -> list[str] | None:
    if aliases is None:
        return None
    if isinstance(aliases, str):
        aliases = aliases.replace("\n", ",").split(",")
    if not isinstance(aliases, list | tuple) or not all(isinstance(a, str) for a in aliases):
        raise RegistryError("aliases must be a list of names")
    cleaned = [a.strip()[:MAX_NAME] for a in aliases if a.strip()]
    if len(cleaned) > MAX_ALIASES:
        raise RegistryError(f"at most {MAX_ALIASES} aliases")
    return cleaned


def register(db: Database, settings: Settings, actor: Actor, party: str, *, name: str, policy: str,
             references: Sequence[tuple[str, bytes]], aliases: Sequence[str] | str = (),
             description: str = "") -> Character:
    """Register a character for `party` with reference images (name, bytes), validated as the CLI's are.
    Vectors are computed by the scan workers (embed_missing), so the web gate loads no embedder."""
    if not isinstance(name, str) or not name.strip() or len(name) > MAX_NAME:
        raise RegistryError(f"a character needs a name of 1 to {MAX_NAME} characters")
    with tempfile.TemporaryDirectory() as scratch:
        paths = []
        for i, (_, data) in enumerate(references):
            path = Path(scratch) / f"ref{i}"
            path.write_bytes(data)
            paths.append(path)
        with writing(db):
            character = registry.add_character(db, settings.references_dir, name=name, rights_holder=party,
                                               policy=policy, references=paths,
                                               aliases=_clean_aliases(aliases) or [],
                                               description=(description or "")[:2000])
            audit.record(db, actor, "character.register", "character", character.id, "", None, character.to_dict())
    screen_catalogue(settings, character.id, "registered")
    return character


def update(db: Database, settings: Settings, actor: Actor, party: str, character_id: str, *, aliases=None,
           policy: str | None = None, description: str | None = None, reason: str = "") -> Character:
    """Change aliases, policy or description of one's own character (a policy change is audited as such)."""
    with writing(db):
        before = own_character(db, party, character_id)
        after = registry.update_character(db, settings.references_dir, character_id, aliases=_clean_aliases(aliases),
                                          policy=policy,
                                          description=description[:2000] if isinstance(description, str) else None)
        action = "policy.change" if after.policy != before.policy else "character.update"
        audit.record(db, actor, action, "character", character_id, reason, before.to_dict(), after.to_dict())
    screen_catalogue(settings, character_id, "updated")
    return after


def retire(db: Database, actor: Actor, party: str, character_id: str, reason: str = "") -> Character:
    with writing(db):
        before = own_character(db, party, character_id)
        after = registry.retire_character(db, character_id)
        audit.record(db, actor, "character.retire", "character", character_id, reason, before.to_dict(),
                     after.to_dict())
    return after


def screen_catalogue(settings: Settings, character_id: str, cause: str) -> None:
    """Screen the back catalogue for a registered or changed character, as a job on the catalogue queue."""
    from gate.pipeline.dispatch import dispatcher  # dispatch reaches the registry through the scan jobs
    from gate.queues import CATALOGUE

    try:
        dispatcher(settings).queues.enqueue(CATALOGUE, "gate.catalogue.screening.screen_job", character_id, cause,
                                            job_id=f"screen-{character_id}-{secrets.token_hex(4)}")
    except Exception as exc:  # noqa: BLE001 - the change stands; an operator can screen again
        log.warning("could not queue the catalogue screening for %s (%s): run `gate catalogue screen %s`",
                    character_id, exc, character_id)


def _character_ids(db: Database, party: str, character_id: str | None) -> list[str]:
    """The rights holder's characters, or the one asked for (which must be theirs: character_not_found)."""
    if character_id is not None:
        own_character(db, party, character_id)
        return [character_id]
    return [c.id for c in own_characters(db, party)]


def image_matches(db: Database, party: str, character_id: str | None = None, limit: int = 200) -> list[dict]:
    """Image sets (training sets, generated images) with images that matched one of this rights holder's
    characters, newest first: how many of the set's images, and the best similarity."""
    ids = _character_ids(db, party, character_id)
    if not ids:
        return []
    return [dict(row) for row in db.query(
        "select s.id, s.kind, s.created_at, s.hub, s.model_id, s.title, s.verdict, s.images as total, "
        "i.character_id as character, count(*) as images, max(i.score) as best_score "
        "from set_images i join image_sets s on s.id = i.set_id "
        f"where i.character_id in ({', '.join('?' for _ in ids)}) group by s.id, i.character_id "
        "order by s.created_at desc limit ?", [*ids, limit])]


def matches(db: Database, party: str, character_id: str | None = None, limit: int = 200) -> list[dict]:
    """Uploads whose scans matched one of this rights holder's characters, newest first: by their renders
    (`matched` of `rendered`, `best_score`), by the likelihood probe (`gain`), or both."""
    ids = _character_ids(db, party, character_id)
    if not ids:
        return []
    marks = ", ".join("?" for _ in ids)
    columns = "u.id, u.created_at, u.hub, u.model_id, u.title, u.verdict, u.review_status"
    renders = db.query(
        f"select {columns}, json_extract(m.value, '$.character') as character, "
        "json_extract(m.value, '$.best_score') as best_score, json_extract(m.value, '$.matched') as matched, "
        "json_extract(m.value, '$.rendered') as rendered "
        "from uploads u, json_each(coalesce(u.matches, '[]')) m "
        f"where json_extract(m.value, '$.character') in ({marks}) order by u.created_at desc limit ?", [*ids, limit])
    gains = db.query(
        f"select {columns}, json_extract(r.value, '$.character') as character, "
        "max(json_extract(r.value, '$.gain')) as gain from uploads u, json_each(coalesce(u.reasons, '[]')) r "
        f"where json_extract(r.value, '$.kind') = 'likelihood_match' and json_extract(r.value, '$.character') in "
        f"({marks}) group by u.id, character order by u.created_at desc limit ?", [*ids, limit])
    found: dict[tuple[str, str], dict] = {}
    for row in renders:
        found.setdefault((row["id"], row["character"]), {**dict(row), "gain": None})
    for row in gains:
        empty = {"best_score": None, "matched": None, "rendered": None}
        found.setdefault((row["id"], row["character"]), {**dict(row), **empty})["gain"] = row["gain"]
    return sorted(found.values(), key=lambda m: m["created_at"], reverse=True)[:limit]


def character_json(character: Character) -> dict:
    return json.loads(json.dumps(character.to_dict()))
