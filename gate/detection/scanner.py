"""A scan: intake, static screening, probing (the engine renders and embeds), matching and the decision.

The engine is passed in, so this module needs no torch: an in-process probes.engine.ProbeEngine for the
operator's local commands, or a `ProbeSpec` (which embedder, which probe set) on the record's workers, which
send ids and terms out to a probe worker and get vectors and images back.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sqlite_utils import Database

from gate.config import Settings
from gate.detection.decisions import CharacterPolicy, Decision, Verdict, decide
from gate.detection.matching import CharacterMatch, References, Thresholds, match_characters, score
from gate.detection.screening import NameHit, find_names
from gate.errors import GateError
from gate.intake import Inspection, inspect_file
from gate.intake.metadata import LoraMetadata
from gate.registry import blocklist
from gate.registry.characters import (
    Character,
    embed_missing,
    list_characters,
    load_references,
    missing_references,
    reference_files,
)
from gate.registry.snapshot import current_version, snapshot_root
from gate.repeat.screen import NearDuplicate, RepeatScreen
from gate.review.feedback import cleared_characters
from probes.contract import UnsupportedLora, embedder_id
from probes.probe_set import ProbeSet, load_probe_set
from probes.shortlist import candidates_for
from probes.snapshot import cached_snapshot

Progress = Callable[[str], None]


@dataclass(frozen=True)
class ProbeSpec:
    """The probe engine as the record's side knows it without loading it: which embedder and probe set.
    It renders and embeds nothing; a Scanner made with it screens, matches and decides."""

    embedder_id: str
    probe_set: ProbeSet

    @property
    def likelihood(self):
        return self.probe_set.likelihood


def probe_spec(settings: Settings) -> ProbeSpec:
    return ProbeSpec(embedder_id(settings.embedder), load_probe_set(settings.probe_set))


class CalibrationMissing(GateError):
    code = "calibration_missing"


def load_thresholds(path: Path, probe_set_id: str, embedder_id: str) -> Thresholds:
    """Thresholds from a calibration file, which must be for this probe set and embedder."""
    try:
        data = json.loads(path.read_text())
        thresholds = Thresholds.from_dict(data["thresholds"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CalibrationMissing(f"no usable calibration at {path} ({exc}); run `gate calibrate`") from None
    for what, have, want in (("probe set", data.get("probe_set"), probe_set_id),
                             ("embedder", data.get("embedder"), embedder_id)):
        if have != want:
            raise CalibrationMissing(f"{path} was calibrated for {what} {have}, not {want}; run `gate calibrate`",
                                     "calibration_stale")
    return thresholds


def lora_texts(metadata: LoraMetadata, filename: str, embeddings: tuple[str, ...] = ()) -> dict[str, list[str]]:
    """The LoRA's own words, by field, for name screening."""
    return {
        "embedded tokens": list(embeddings),
        "file name": [Path(filename).stem],
        "title": [metadata.title or ""],
        "output name": [metadata.output_name or ""],
        "trigger": metadata.trigger_phrases,
        "tags": metadata.tags + [tag for tag, _ in metadata.top_tags],
        "dataset folders": list(metadata.dataset_dirs) + list(metadata.tag_frequency),
        "description": [metadata.description or "", metadata.training_comment or ""],
    }


def probe_terms(metadata: LoraMetadata, characters: list[Character],
                embeddings: tuple[str, ...] = ()) -> dict[str, list[str]]:
    """What the probe set's templates are filled with: the LoRA's trigger (a bundled embedding's token is one),
    tags and name, and the registry."""
    return {
        # Bundled tokens first: the trigger templates take only the first few, and metadata is free text.
        "trigger": list(dict.fromkeys([*embeddings, *metadata.trigger_phrases])),
        "tag": [tag for tag, _ in metadata.top_tags],
        "output_name": [name for name in (metadata.output_name, metadata.title) if name],
        "registry": [c.name for c in characters],
    }


TEXT_ENCODERS = ("text_encoder", "text_encoder_2", "text_encoder_3")


def undeclared_trigger(inspection: Inspection, hub_meta: dict | None = None) -> bool:
    """Whether the LoRA adapts a text encoder yet declares no trigger: no trigger phrase, caption tags or bundled
    token in the file, no trigger words on the hub's page. Such a LoRA may draw its subject only for a word that
    no probe says, so the renders and the likelihood probe may miss it (gate.detection.decisions uses this)."""
    layout, metadata = inspection.layout, inspection.metadata
    if not any(layout.components.get(component, 0) for component in TEXT_ENCODERS):
        return False
    declared = (metadata.trigger_phrases or metadata.top_tags or layout.embeddings
                or (hub_meta or {}).get("trigger_words"))
    return not declared


@dataclass
class ScanResult:
    path: str
    inspection: Inspection
    decision: Decision | None = None
    matches: list[CharacterMatch] = field(default_factory=list)
    name_hits: list[NameHit] = field(default_factory=list)
    probe_set: str | None = None
    outcome: object | None = None  # the engine's ProbeOutcome, for evidence
    references: References | None = None
    blocklisted: str | None = None
    not_probed: str | None = None
    near_duplicates: list[NearDuplicate] = field(default_factory=list)  # flagged LoRAs its weights match
    repeat_offender: dict | None = None  # the uploader's history, when the repeat-offender policy applies
    undeclared_trigger: bool = False  # it adapts a text encoder and declares no trigger (undeclared_trigger())
    reference_images: dict[str, list[str]] = field(default_factory=dict)  # the likelihood probe's, per character
    preview_reasons: list = field(default_factory=list)  # the hub's preview images, judged (gate.images.previews)
    previews: list[dict] = field(default_factory=list)  # those images for the evidence page: name, path, shows
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def decided_without_rendering(self) -> bool:
        """Blocklisted, or a near-duplicate of a flagged LoRA: the static signals settle it."""
        return bool(self.blocklisted or self.near_duplicates)

    @property
    def verdict(self) -> str | None:
        return str(self.decision.verdict) if self.decision else None

    def to_dict(self, characters: dict[str, Character] | None = None) -> dict:
        characters = characters or {}
        inspection = self.inspection.to_dict()
        result = {
            "path": self.path,
            "ok": self.inspection.ok,
            "verdict": self.verdict,
            "reasons": self.decision.to_dict()["reasons"] if self.decision else [],
            "matches": [self._match_dict(m, characters) for m in self.matches],
            "probe_set": self.probe_set,
            "intake": {k: inspection[k] for k in ("format", "base_family", "rank", "tensor_hash", "file_sha256")},
            "timings": {k: round(v, 4) for k, v in self.timings.items()},
        }
        if not self.inspection.ok:
            result["error"] = inspection["error"]
        return result

    def _match_dict(self, match: CharacterMatch, characters: dict[str, Character]) -> dict:
        entry = match.to_dict()
        character = characters.get(match.character_id)
        entry["character"] = match.character_id
        entry["name"] = character.name if character else match.character_id
        del entry["character_id"]
        if self.outcome is not None:
            probe = self.outcome.probes[match.best_render]
            entry["best_prompt"], entry["best_seed"] = probe.prompt, probe.seed
        if self.references is not None and self.references.paths:
            # The file's name, not its path: the status API must not show where the server keeps its files.
            entry["best_reference"] = Path(self.references.paths[match.best_reference]).name
        return entry


class Scanner:
    """Everything a scan needs, loaded once and reused across files."""

    def __init__(self, settings: Settings, db: Database, engine, thresholds: Thresholds | None = None):
        self.settings, self.db, self.engine = settings, db, engine
        self._thresholds = thresholds
        self.repeats = RepeatScreen(settings, db)
        self.refresh()

    @property
    def thresholds(self) -> Thresholds:
        if self._thresholds is None:
            self._thresholds = load_thresholds(self.settings.calibration_file, self.engine.probe_set.id,
                                               self.engine.embedder_id)
        return self._thresholds

    def policies(self) -> dict[str, CharacterPolicy]:
        return {c.id: CharacterPolicy(c.id, c.name, Verdict(c.policy)) for c in self.characters.values()}

    def refresh(self) -> None:
        """Re-read the registry (characters registered or retired since this scanner was made). An engine that
        embeds does the references without vectors here; else they go out with the next probe request."""
        if hasattr(self.engine, "embed"):
            embed_missing(self.db, self.engine.embed, self.engine.embedder_id)
        self.characters = {c.id: c for c in list_characters(self.db)}
        self.references = load_references(self.db, self.engine.embedder_id)
        self.files = reference_files(self.db)
        self.images = {cid: [path for path, _ in files] for cid, files in self.files.items()}

    def screen(self, path: str | Path, filename: str | None = None, hub_meta: dict | None = None,
               inspection: Inspection | None = None) -> ScanResult:
        """Intake and the static signals (names, blocklist): everything a scan learns without rendering."""
        started = time.perf_counter()
        inspection = inspection or inspect_file(path, self.settings.intake)
        result = ScanResult(str(path), inspection)
        result.timings["intake"] = time.perf_counter() - started
        if not inspection.ok:
            return result
        result.name_hits = self.name_hits(inspection, filename or str(path), hub_meta)
        result.undeclared_trigger = undeclared_trigger(inspection, hub_meta)
        tensor_hash = inspection.fingerprints.tensor_hash
        entry = blocklist.contains(self.db, tensor_hash)
        if entry:
            result.blocklisted = f"{tensor_hash[:16]}…, {entry['reason']}"  # caught without rendering
        self.repeats.screen(result, hub_meta)  # repeat infringement: exact and near-duplicate re-uploads
        return result

    def name_hits(self, inspection: Inspection, filename: str, hub_meta: dict | None = None) -> list[NameHit]:
        """Registered names and aliases in the LoRA's metadata, its file name and what the hub says of it."""
        texts = lora_texts(inspection.metadata, filename, inspection.layout.embeddings)
        if hub_meta:  # what the hub says of the upload is screened too: its title, tags, trigger words
            texts["hub title"] = [hub_meta.get("title") or ""]
            texts["hub tags"] = hub_meta.get("tags") or []
            texts["hub trigger words"] = hub_meta.get("trigger_words") or []
            texts["hub description"] = [hub_meta.get("description") or ""]
        return find_names(texts, {c.id: c.names for c in self.characters.values()})

    def probe_request(self, result: ScanResult, trigger_words: list[str] | None = None) -> dict:
        """What the probe engine needs for a screened file, as JSON: the seam to a GPU worker."""
        inspection = result.inspection
        terms = probe_terms(inspection.metadata, list(self.characters.values()), inspection.layout.embeddings)
        terms["trigger"] = terms["trigger"] + list(trigger_words or [])
        return {"lora_format": inspection.layout.format, "family": inspection.family.family,
                "modules": len(inspection.layout.modules), "terms": terms, "probe_set": self.engine.probe_set.id,
                "file_sha256": inspection.fingerprints.file_sha256,
                "registry": (version := self.registry_version()),
                "registry_path": str(snapshot_root(self.settings.data_dir) / version),  # for a worker on this disk
                "named": sorted({hit.character_id for hit in result.name_hits}),
                "embed": missing_references(self.db, self.engine.embedder_id)}

    def registry_version(self) -> str:
        """The registry's snapshot version now (written for probe workers if new): what a probe measures."""
        return current_version(self.db, self.settings.data_dir, self.engine.embedder_id)

    def reference_sets(self, named: Collection[str] = ()) -> list[dict]:
        """Each registered character's id, name and reference image paths, for the likelihood probe; `named`:
        the characters the LoRA's texts name, which the probe measures in full whatever its screen says."""
        return [{"character_id": cid, "name": self.characters[cid].name, "paths": [path for path, _ in files],
                 "sha256s": [digest for _, digest in files], "named": cid in named}
                for cid, files in self.files.items() if cid in self.characters]

    def scan(self, path: str | Path, progress: Progress | None = None, filename: str | None = None,
             hub_meta: dict | None = None, conclude: bool = True,
             inspection: Inspection | None = None) -> ScanResult:
        """Scan one file end to end in this process. Refusals and unsupported LoRAs are results, not exceptions.

        With conclude=False the evidence is gathered but not judged (calibration judges it later); a caller
        that already ran intake on the file passes its `inspection` rather than reading the file twice."""
        progress = progress or (lambda stage: None)
        started = time.perf_counter()
        progress("intake")
        result = self.screen(path, filename, hub_meta, inspection)
        if result.inspection.ok and not result.decided_without_rendering:
            try:
                outcome = self.probe(path, result.inspection, progress, (hub_meta or {}).get("trigger_words"),
                                     result.name_hits)
            except UnsupportedLora as exc:
                result.not_probed = exc.message
            else:
                self.attach(result, outcome)
        if conclude:
            self.conclude(result)
        result.timings["total"] = time.perf_counter() - started
        return result

    def probe(self, path: str | Path, inspection: Inspection, progress: Progress | None = None,
              trigger_words: list[str] | None = None, name_hits: Sequence[NameHit] = ()):
        """Render and embed a file that intake accepted, in this process; raises UnsupportedLora."""
        request = self.probe_request(ScanResult(str(path), inspection, name_hits=list(name_hits)), trigger_words)
        version = request["registry"]
        snapshot = cached_snapshot(str(snapshot_root(self.settings.data_dir) / version), version)
        picked = candidates_for(snapshot, request["named"], self.engine.probe_set.likelihood, lambda path, digest: path)
        return self.engine.probe(path, lora_format=request["lora_format"], family=request["family"],
                                 modules=request["modules"], terms=request["terms"], progress=progress,
                                 candidates=picked)

    def attach(self, result: ScanResult, outcome) -> None:
        """Add the probe engine's renders and vectors to a screened result."""
        result.outcome, result.probe_set, result.references = outcome, outcome.probe_set_id, self.references
        result.reference_images = self.images  # what the likelihood gains are per reference of, in order
        result.timings.update(outcome.timings)

    def _cleared(self, result: ScanResult) -> set[str]:
        return cleared_characters(self.db, result.inspection.fingerprints.tensor_hash) if result.inspection.ok \
            else set()

    def conclude(self, result: ScanResult, thresholds: Thresholds | None = None) -> ScanResult:
        """Match the renders and decide; separate from probing so evidence can be re-judged cheaply. A file intake
        refused gets no decision: its result is the refusal."""
        if not result.inspection.ok:
            return result
        thresholds = thresholds or self.thresholds
        mark = time.perf_counter()
        if result.outcome is not None:
            result.matches = match_characters(score(result.outcome.lora_embeddings, self.references),
                                              score(result.outcome.base_embeddings, self.references),
                                              self.references, thresholds)
        result.decision = decide(
            matches=result.matches, name_hits=result.name_hits, characters=self.policies(), thresholds=thresholds,
            blocklisted=result.blocklisted, not_probed=result.not_probed,
            not_probed_verdict=Verdict(self.settings.not_probed_verdict),
            cleared=self._cleared(result),  # issue 7: allowed false positives are remembered
            likelihood=result.outcome.likelihood if result.outcome is not None else (),
            near_duplicates=result.near_duplicates, repeat_offender=result.repeat_offender,
            undeclared_trigger=result.undeclared_trigger, probed=result.outcome is not None,
            previews=result.preview_reasons,
        )
        result.timings["match"] = time.perf_counter() - mark
        return result
