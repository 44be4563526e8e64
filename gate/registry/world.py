"""The embedded default: the fixture world's manifest, used to seed the registry and to calibrate."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from sqlite_utils import Database

from gate.errors import GateError
from gate.registry.characters import Embed, add_character, list_characters


class WorldMissing(GateError):
    code = "world_missing"


@dataclass(frozen=True)
class World:
    """A manifest and the directory its relative paths start from."""

    manifest: dict
    root: Path

    @classmethod
    def load(cls, world_dir: Path) -> World:
        path = Path(world_dir).parent / "manifest.json"
        try:
            manifest = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise WorldMissing(f"no fixture world manifest at {path} ({exc})") from None
        return cls(manifest, path.parent.parent)

    def path(self, relative: str) -> Path:
        return self.root / relative

    def characters(self, registered: bool | None = None) -> list[dict]:
        return [c for c in self.manifest.get("characters", []) if registered is None or c["registered"] == registered]

    def held_back(self) -> set[str]:
        return {c["id"] for c in self.characters() if c.get("held_back")}

    def loras(self, *kinds: str) -> list[dict]:
        """LoRA entries (of the given kinds), each with its character's `held_back` flag added."""
        held_back = self.held_back()
        return [{**lora, "held_back": lora.get("character") in held_back}
                for lora in self.manifest.get("loras", []) if not kinds or lora["kind"] in kinds]


def seed_registry(db: Database, world: World, store: Path, embed: Embed | None = None,
                  embedder_id: str | None = None) -> int:
    """Register the world's registered characters in an empty registry; returns how many were added.

    One transaction that takes the write lock first, so that processes starting together seed it once."""
    from gate.record.db import writing

    with writing(db):
        if list_characters(db, include_retired=True):
            return 0
        added = _seed(db, world, store)
    if embed and embedder_id:
        from gate.registry.characters import embed_missing

        embed_missing(db, embed, embedder_id)
    return added


def _seed(db: Database, world: World, store: Path) -> int:
    added = 0
    for character in world.characters(registered=True):
        add_character(
            db, store, character_id=character["id"], name=character["name"], aliases=character.get("aliases", []),
            rights_holder=character["rights_holder"], policy=character["policy"],
            description=character.get("description", ""),
            references=[world.path(p) for p in character["references"]],
        )
        added += 1
    return added
