"""The registry of characters that rights holders protect: names, aliases, references, policy.

Embedding references needs the embedder (the GPU side): a probe worker embeds them (`missing_references` goes
out in its request, `store_vectors` keeps what comes back), or a local command passes an `embed` function, so
this module stays free of torch.
"""

from __future__ import annotations

import base64
import json
import re
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from sqlite_utils import Database

from gate.detection.matching import References
from gate.errors import GateError
from gate.record.db import writing
from gate.registry.images import CheckedImage, check_image

MAX_REFERENCES = 64
POLICIES = ("block", "quarantine")

Embed = Callable[[list[np.ndarray]], np.ndarray]  # uint8 RGB images (h, w, 3) -> vectors (n, d)


class RegistryError(GateError):
    code = "registry_invalid"


@dataclass(frozen=True)
class Character:
    id: str
    name: str
    aliases: list[str]
    rights_holder: str
    policy: str
    status: str
    description: str
    references: int

    @property
    def names(self) -> list[str]:
        return [self.name, *self.aliases]

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def slug(name: str) -> str:
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    return re.sub(r"[^a-z0-9]+", "_", ascii_name.lower()).strip("_") or "character"


def _row_to_character(db: Database, row: dict) -> Character:
    count = db["character_references"].count_where("character_id = ?", [row["id"]])
    return Character(row["id"], row["name"], json.loads(row["aliases"]), row["rights_holder"], row["policy"],
                     row["status"], row["description"] or "", count)


def add_character(
    db: Database,
    store: Path,
    *,
    name: str,
    rights_holder: str,
    policy: str,
    references: Sequence[str | Path],
    aliases: Sequence[str] = (),
    description: str = "",
    character_id: str | None = None,
    embed: Embed | None = None,
    embedder_id: str | None = None,
) -> Character:
    """Register a character with validated reference images (copied into `store`), embedded if asked."""
    if not name.strip() or not rights_holder.strip():
        raise RegistryError("a character needs a name and a rights holder")
    if policy not in POLICIES:
        raise RegistryError(f"policy must be one of {', '.join(POLICIES)}, not {policy!r}")
    if not 1 <= len(references) <= MAX_REFERENCES:
        raise RegistryError(f"give 1 to {MAX_REFERENCES} reference images, not {len(references)}")
    checked = [check_image(path) for path in references]
    character_id = character_id or slug(name)
    if db["characters"].count_where("id = ?", [character_id]):
        raise RegistryError(f"a character with id {character_id!r} is already registered")
    now = _now()
    with writing(db):
        db["characters"].insert({
            "id": character_id, "name": name.strip(), "aliases": json.dumps([a.strip() for a in aliases if a.strip()],
                                                                           ensure_ascii=False),
            "rights_holder": rights_holder.strip(), "policy": policy, "status": "active",
            "description": description, "created_at": now, "updated_at": now,
        })
        for image in checked:
            _store_reference(db, store, character_id, image, now)
    if embed and embedder_id:
        embed_missing(db, embed, embedder_id)
    return get_character(db, character_id)


def _store_reference(db: Database, store: Path, character_id: str, image: CheckedImage, now: str) -> None:
    target = store / character_id / f"{image.sha256[:16]}.{image.format.lower()}"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(image.data)
    db["character_references"].insert(
        {"character_id": character_id, "path": str(target), "sha256": image.sha256, "width": image.width,
         "height": image.height, "created_at": now},
        ignore=True,  # the same image twice is one reference
    )


def get_character(db: Database, character_id: str) -> Character:
    rows = list(db["characters"].rows_where("id = ?", [character_id]))
    if not rows:
        raise RegistryError(f"no character {character_id!r}", code="character_not_found")
    return _row_to_character(db, rows[0])


def list_characters(db: Database, include_retired: bool = False) -> list[Character]:
    where = None if include_retired else "status = 'active'"
    return [_row_to_character(db, row) for row in db["characters"].rows_where(where, order_by="id")]


def retire_character(db: Database, character_id: str) -> Character:
    get_character(db, character_id)
    db["characters"].update(character_id, {"status": "retired", "updated_at": _now()})
    return get_character(db, character_id)


def missing_references(db: Database, embedder_id: str) -> list[dict]:
    """Active characters' references with no vector for this embedder yet: id, path and sha256, as a probe
    worker's `embed` request carries them (the worker checks each file against its sha256)."""
    return [dict(row) for row in db.query(
        "select r.id, r.path, r.sha256 from character_references r join characters c on c.id = r.character_id "
        "where c.status = 'active' and r.id not in "
        "(select reference_id from reference_embeddings where embedder = ?) order by r.id", [embedder_id])]


def embed_missing(db: Database, embed: Embed, embedder_id: str, batch: int = 64) -> int:
    """Embed every active reference that has no vector for this embedder, in this process; returns how many."""
    rows = missing_references(db, embedder_id)
    for start in range(0, len(rows), batch):
        chunk = rows[start : start + batch]
        vectors = embed([check_image(row["path"]).rgb() for row in chunk])
        _insert_vectors(db, embedder_id, {row["id"]: vector for row, vector in zip(chunk, vectors, strict=True)})
    return len(rows)


def store_vectors(db: Database, embedder_id: str, encoded: dict[str, str]) -> int:
    """Keep the vectors a probe worker computed ({reference id: base64 float32}); references removed meanwhile
    are skipped. Returns how many were kept."""
    known = {row[0] for row in db.execute("select id from character_references")}
    vectors = {int(ref_id): np.frombuffer(base64.b64decode(text), np.float32)
               for ref_id, text in encoded.items() if int(ref_id) in known}
    _insert_vectors(db, embedder_id, vectors)
    return len(vectors)


def _insert_vectors(db: Database, embedder_id: str, vectors: dict[int, np.ndarray]) -> None:
    with writing(db):
        db["reference_embeddings"].insert_all(
            [{"reference_id": ref_id, "embedder": embedder_id, "vector": np.asarray(v, np.float32).tobytes()}
             for ref_id, v in vectors.items()],
            replace=True,
        )


def reference_files(db: Database) -> dict[str, list[tuple[str, str]]]:
    """Every active character's references as (path, sha256), whether or not they are embedded yet (the
    likelihood probe reads the images themselves; a probe worker without the gate's disk fetches each by its
    sha256, GET /internal/blobs/<sha256>)."""
    found: dict[str, list[tuple[str, str]]] = {}
    for row in db.query("select r.character_id, r.path, r.sha256 from character_references r join characters c "
                        "on c.id = r.character_id where c.status = 'active' order by r.character_id, r.id"):
        found.setdefault(row["character_id"], []).append((row["path"], row["sha256"]))
    return found


_ACTIVE_REFERENCES = ("from reference_embeddings e join character_references r on r.id = e.reference_id "
                      "join characters c on c.id = r.character_id where e.embedder = ? and c.status = 'active'")


def load_references(db: Database, embedder_id: str, views: int = 1) -> References:
    """Active characters' reference vectors for this embedder, stacked, with each row's image path. A reference
    embedded as `views` views (its vector their vectors in a row: probes/views.py) gives one row a view. Filled
    into one array as the rows arrive: a registry of thousands holds its vectors once, not twice."""
    count = db.execute(f"select count(*) {_ACTIVE_REFERENCES}", [embedder_id]).fetchone()[0]
    cursor = db.execute(f"select r.character_id, r.path, e.vector {_ACTIVE_REFERENCES} "
                        "order by r.character_id, r.id", [embedder_id])
    vectors, owners, paths, ids, read = None, np.zeros(count * views, int), [], {}, 0
    for character_id, path, blob in cursor:
        if read == count:  # the registry grew between the count and the rows: read it again
            return load_references(db, embedder_id, views)
        row = np.frombuffer(blob, np.float32).reshape(views, -1)
        if vectors is None:
            vectors = np.empty((count * views, row.shape[1]), np.float32)
        vectors[read * views:(read + 1) * views] = row  # a row of another width fails here, as it should
        owners[read * views:(read + 1) * views] = ids.setdefault(character_id, len(ids))
        paths += [path] * views
        read += 1
    if read < count:  # ... or shrank
        return load_references(db, embedder_id, views)
    if vectors is None:
        return References((), np.zeros((0, 1), np.float32), np.zeros(0, int))
    return References(tuple(ids), vectors, owners, tuple(paths), views)


def registry_fingerprint(db: Database, embedder_id: str) -> tuple:
    """Changes whenever the active references' vectors for this embedder could: characters added, changed or
    retired, references added or removed, references embedded."""
    return (embedder_id,
            *db.execute("select count(*), max(updated_at), sum(status = 'active') from characters").fetchone(),
            *db.execute("select count(*), max(id) from character_references").fetchone(),
            db.execute("select count(*) from reference_embeddings where embedder = ?", [embedder_id]).fetchone()[0])


def update_character(
    db: Database,
    store: Path,
    character_id: str,
    *,
    name: str | None = None,
    aliases: Sequence[str] | None = None,
    add_aliases: Sequence[str] = (),
    policy: str | None = None,
    rights_holder: str | None = None,
    description: str | None = None,
    add_references: Sequence[str | Path] = (),
    remove_references: Sequence[str] = (),
    embed: Embed | None = None,
    embedder_id: str | None = None,
) -> Character:
    """Change a registered character: names, policy, references (new ones validated and embedded on arrival;
    old ones removed by sha256 prefix). The whole change is one transaction, and is refused whole."""
    character = get_character(db, character_id)
    if policy is not None and policy not in POLICIES:
        raise RegistryError(f"policy must be one of {', '.join(POLICIES)}, not {policy!r}", "policy_invalid")
    if name is not None and not name.strip():
        raise RegistryError("a character needs a name")
    checked = [check_image(path) for path in add_references]
    current = {row["sha256"]: row for row in db["character_references"].rows_where("character_id = ?",
                                                                                     [character_id])}
    removed = []
    for prefix in remove_references:
        found = [sha for sha in current if len(prefix) >= 8 and sha.startswith(prefix.lower())]
        if len(found) != 1:
            raise RegistryError(f"{prefix!r} names {len(found)} of {character_id}'s references; give at least 8 "
                                "characters of one reference's sha256", "reference_not_found")
        removed.append(current[found[0]])
    remaining = len(current) - len(removed) + len({c.sha256 for c in checked} - set(current))
    if not 1 <= remaining <= MAX_REFERENCES:
        raise RegistryError(f"a character has 1 to {MAX_REFERENCES} references; this change leaves {remaining}",
                            "references_count")
    changes: dict = {"updated_at": _now()}
    if name is not None:
        changes["name"] = name.strip()
    new_aliases = list(character.aliases if aliases is None else aliases) + list(add_aliases)
    if aliases is not None or add_aliases:
        kept = list(dict.fromkeys(a.strip() for a in new_aliases if a.strip()))
        changes["aliases"] = json.dumps(kept, ensure_ascii=False)
    for key, value in (("policy", policy), ("rights_holder", rights_holder), ("description", description)):
        if value is not None:
            changes[key] = value.strip() if key == "rights_holder" else value
    now = changes["updated_at"]
    with writing(db):
        db["characters"].update(character_id, changes)
        for row in removed:
            db.execute("delete from reference_embeddings where reference_id = ?", [row["id"]])
            db.execute("delete from character_references where id = ?", [row["id"]])
        for image in checked:
            _store_reference(db, store, character_id, image, now)
    for row in removed:
        if not db["character_references"].count_where("path = ?", [row["path"]]):
            Path(row["path"]).unlink(missing_ok=True)
    if embed and embedder_id:
        embed_missing(db, embed, embedder_id)
    return get_character(db, character_id)


def reference_rows(db: Database, character_id: str) -> list[dict]:
    """A character's reference images: sha256, size and where they are kept."""
    get_character(db, character_id)
    return [{"sha256": r["sha256"], "width": r["width"], "height": r["height"], "path": r["path"],
             "created_at": r["created_at"]}
            for r in db["character_references"].rows_where("character_id = ?", [character_id], order_by="id")]
