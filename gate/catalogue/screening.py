"""Screening the back catalogue for a character, when it is registered or changed.

A concluded scan's probe embeddings are stored with its upload (gate.catalogue.index). Registering or changing
a character then screens the whole catalogue at once (`registry_changed`): a vectorised search over a resident
float16 matrix finds every render that could match the character, and only those LoRAs are judged, with the live
matcher's own rule (gate.detection.matching) and calibrated thresholds. Nothing is rendered. Hits escalate the
upload's verdict per the character's policy, journalled with the evidence and told to the hub in the same
transaction, and the rights holder gets a report.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from sqlite_utils import Database

from gate.catalogue.index import ScreeningError, catalogue_index, stored_vectors
from gate.config import Settings, load_settings
from gate.detection.decisions import CharacterPolicy, Verdict, decide
from gate.detection.matching import References, Thresholds, match_characters, render_matches, score
from gate.detection.screening import find_names
from gate.pipeline.outcome import redecide
from gate.queues import CATALOGUE, CATALOGUE_PROBE
from gate.record.db import writing
from gate.record.uploads import UploadState, hub_meta
from gate.registry.characters import get_character, list_characters, load_references, missing_references
from gate.runtime import thread_record

log = logging.getLogger(__name__)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")

# ---------------------------------------------------------------------------------------------------------
# Screening


@dataclass
class Hit:
    upload_id: str
    verdict_before: str
    verdict_after: str
    certainty: str
    matched: int
    rendered: int
    best_score: float
    best_lift: float
    renders: list[dict]

    @property
    def changed(self) -> bool:
        return self.verdict_before != self.verdict_after


@dataclass
class Screening:
    id: int | None
    character_id: str
    cause: str
    screened: int = 0
    renders: int = 0
    candidates: int = 0
    hits: list[Hit] = field(default_factory=list)
    seconds: float = 0.0
    skipped: str | None = None  # why nothing was screened

    @property
    def changed(self) -> int:
        return sum(hit.changed for hit in self.hits)

    def summary(self) -> str:
        moved = ", ".join(f"{h.upload_id} {h.verdict_before} -> {h.verdict_after}" for h in self.hits if h.changed)
        return (f"screened {self.screened:,} stored LoRAs ({self.renders:,} renders) for {self.character_id} in "
                f"{self.seconds:.2f} s: {len(self.hits)} show it, {self.changed} changed"
                + (f": {moved}" if moved else ""))


def current_embedder(settings: Settings) -> tuple[str, str]:
    """(embedder id, probe set id) of the configured models: what stored vectors and thresholds must match."""
    from probes.contract import embedder_id
    from probes.probe_set import load_probe_set

    return embedder_id(settings.embedder), load_probe_set(settings.probe_set).id


def _hub_texts(upload: dict) -> dict[str, list[str]]:
    return {"file name": [Path(upload["filename"] or "").stem], "hub title": [upload["title"] or ""],
            "hub tags": json.loads(upload["tags"] or "[]"),
            "hub trigger words": json.loads(upload["trigger_words"] or "[]"),
            "hub description": [upload["description"] or ""]}


def _judge(db: Database, upload: dict, character_id: str, references: References, thresholds: Thresholds,
           policies: dict[str, CharacterPolicy]) -> tuple[Hit, object] | None:
    """The live rule on one upload's stored renders, for one character: the hit and its reason, if any."""
    stored = stored_vectors(db, upload["id"])
    if stored is None:
        return None
    lora_vectors, base_vectors, probes = stored
    lora, base = score(lora_vectors, references), score(base_vectors, references)
    match = next((m for m in match_characters(lora, base, references, thresholds)
                  if m.character_id == character_id), None)
    if match is None:
        return None
    names = {character_id: [policies[character_id].name, *get_character(db, character_id).aliases]}
    decision = decide(matches=[match], name_hits=find_names(_hub_texts(upload), names), characters=policies,
                      thresholds=thresholds)
    reason = next((r for r in decision.reasons if r.kind == "visual_match"), None)
    if reason is None:
        return None
    before = Verdict(upload["verdict"] or "allow")
    after = max(before, reason.verdict, key=lambda v: v.severity)  # screening escalates, never clears
    c = references.character_ids.index(character_id)
    rows = np.flatnonzero(render_matches(lora, base, thresholds) == c)
    renders = [{"render": int(i), "prompt": probes[i]["prompt"], "seed": probes[i]["seed"],
                "score": round(float(lora.similarity[i, c]), 4),
                "lift": round(float(lora.similarity[i, c] - base.similarity[i, c]), 4),
                "reference": references.paths[lora.nearest_reference[i, c]] if references.paths else None}
               for i in rows]
    return Hit(upload["id"], str(before), str(after), reason.details["certainty"], match.matched, match.rendered,
               round(match.best_score, 4), round(match.best_lift, 4), renders), reason


def screen_character(db: Database, character_id: str, settings: Settings | None = None, *,
                     cause: str = "registered", thresholds: Thresholds | None = None,
                     embedder_id: str | None = None) -> Screening:
    """Screen every decided upload's stored renders for one character; escalate the ones that show it."""
    from gate.detection.scanner import load_thresholds

    started = time.perf_counter()
    settings = settings or load_settings()
    character = get_character(db, character_id)
    if character.status != "active":
        return Screening(None, character_id, cause, skipped="the character is retired")
    if embedder_id is None or thresholds is None:
        embedder_id, probe_set_id = current_embedder(settings)
        thresholds = thresholds or load_thresholds(settings.calibration_file, probe_set_id, embedder_id)
    references = load_references(db, embedder_id)
    if character_id not in references.character_ids:
        raise ScreeningError(f"{character_id}'s references have no vectors for embedder {embedder_id}; "
                             "embed them first (gate characters update embeds on arrival)", "references_not_embedded")
    index = catalogue_index(db, embedder_id)
    c = references.character_ids.index(character_id)
    candidates = index.candidates(references.vectors[references.owners == c], thresholds)
    policies = {ch.id: CharacterPolicy(ch.id, ch.name, Verdict(ch.policy)) for ch in list_characters(db)}
    screening = Screening(None, character_id, cause, screened=index.loras, renders=int(index.live.sum()),
                          candidates=len(candidates))
    judged = []
    for upload_id in candidates:
        upload = next(iter(db["uploads"].rows_where("id = ?", [upload_id])), None)
        if upload is None or upload["state"] != UploadState.DECIDED:
            continue  # live scans match the registry as it is now; refused and failed uploads have no verdict
        found = _judge(db, upload, character_id, references, thresholds, policies)
        if found:
            judged.append(found)
    screening.hits = [hit for hit, _ in judged]
    screening.seconds = time.perf_counter() - started
    with writing(db):
        screening.id = db["screenings"].insert({
            "character_id": character_id, "cause": cause, "embedder": embedder_id,
            "thresholds": json.dumps(thresholds.to_dict()), "screened": screening.screened,
            "renders": screening.renders, "candidates": screening.candidates, "hits": len(screening.hits),
            "changed": screening.changed, "seconds": round(screening.seconds, 4), "created_at": _now()}).last_pk
        for hit, reason in judged:
            db["screening_hits"].insert({
                "screening_id": screening.id, "upload_id": hit.upload_id, "verdict_before": hit.verdict_before,
                "verdict_after": hit.verdict_after, "changed": int(hit.changed), "certainty": hit.certainty,
                "matched": hit.matched, "rendered": hit.rendered, "best_score": hit.best_score,
                "best_lift": hit.best_lift, "renders": json.dumps(hit.renders, ensure_ascii=False)})
            if hit.changed:
                _escalate(db, hit, reason, character.name, screening.id)
    log.info("%s", screening.summary())
    return screening


def _escalate(db: Database, hit: Hit, reason, name: str, screening_id: int) -> None:
    """Apply a screening hit: the new verdict and reason, journalled with its evidence, and the hub told."""
    upload = next(iter(db["uploads"].rows_where("id = ?", [hit.upload_id])))
    reasons = [*json.loads(upload["reasons"] or "[]"),
               {**reason.to_dict(), "screening": screening_id,
                "message": f"back-catalogue screening: {reason.message}"}]
    matches = json.loads(upload["matches"] or "[]")
    if hit.rendered:  # render evidence; a likelihood hit's evidence is its reason (gain, prompt, references)
        matches.append({"character": reason.character_id, "name": name, "matched": hit.matched,
                        "rendered": hit.rendered, "share": round(hit.matched / hit.rendered, 4),
                        "best_score": hit.best_score, "best_lift": hit.best_lift, "screening": screening_id})
    redecide(
        db, hit.upload_id, "screening", f"screened for {reason.character_id}: {hit.verdict_after}",
        {"verdict": hit.verdict_after, "reasons": json.dumps(reasons, ensure_ascii=False),
         "matches": json.dumps(matches, ensure_ascii=False)},
        {"screening": screening_id, "character": reason.character_id, "verdict_before": hit.verdict_before,
         "verdict_after": hit.verdict_after, "certainty": hit.certainty, "matched": hit.matched,
         "rendered": hit.rendered, "best_score": hit.best_score, "renders": hit.renders,
         **({"likelihood": reason.details} if reason.kind == "likelihood_match" else {})})


def registry_changed(db: Database, character_id: str, settings: Settings | None = None, *, cause: str = "changed",
                     embed=None) -> Screening:
    """The one entry point after a character is registered or changed, in this process: embed its references if
    needed (with `embed`; a local command passes one), then screen the back catalogue for it."""
    from gate.registry.characters import embed_missing

    settings = settings or load_settings()
    if embed is not None:
        embed_missing(db, embed, current_embedder(settings)[0])
    return screen_character(db, character_id, settings, cause=cause)


def screen_job(character_id: str, cause: str) -> str:
    """Catalogue-queue job for a character changed on the web: references without vectors go to a probe worker
    first (`screen_embedded` carries on); then `registry_changed` (stored renders) and, where the probe set has
    one, the likelihood probe over the catalogue (`likelihood_screen`, one job chain per upload)."""
    from gate.pipeline.jobs import queue_embedding, reply_to
    from gate.queues import context

    settings = context().settings
    db = thread_record(settings)
    pending = missing_references(db, current_embedder(settings)[0])
    if pending:
        job = f"screen-{character_id}-{secrets.token_hex(4)}"
        queue_embedding(pending, f"{job}-references", reply_to(
            CATALOGUE, "gate.catalogue.screening.screen_embedded", [character_id, cause], f"{job}-embedded"),
            CATALOGUE_PROBE)
        return f"{len(pending)} references sent to be embedded first"
    summary = registry_changed(db, character_id, settings, cause=cause).summary()
    if likelihood_configured(settings):
        screening = likelihood_screen(db, character_id, settings, cause=cause, queues=context().queues)
        summary += f"; likelihood screening {screening.id}: {screening.screened} uploads queued"
    return summary


def screen_embedded(character_id: str, cause: str, embedded: dict) -> str:
    """A probe worker's vectors for a changed character's references: kept, then the screening goes on."""
    from gate.pipeline.jobs import references_embedded

    references_embedded(embedded)
    return screen_job(character_id, cause)


def likelihood_configured(settings: Settings) -> bool:
    from probes.probe_set import load_probe_set

    return load_probe_set(settings.probe_set).likelihood is not None


# ---------------------------------------------------------------------------------------------------------
# Screening with the likelihood probe


def _stored_gains(upload: dict) -> list:
    """The likelihood matches an upload's decision already holds: so a new character's gain is judged beside
    them (a LoRA that makes most of the registry likelier is a shared style, and only quarantined)."""
    from probes.likelihood import CharacterGain

    return [CharacterGain(r["character"], float(r["gain"]), str(r.get("prompt", "")), ())
            for r in json.loads(upload["reasons"] or "[]")
            if r.get("kind") == "likelihood_match" and r.get("character") and isinstance(r.get("gain"), int | float)]


def likelihood_request(scanner, upload: dict) -> tuple[object, dict] | None:
    """An upload screened again (its file re-validated: trust no earlier read) and what the likelihood probe
    needs to load its LoRA; None when the file no longer passes intake."""
    from gate.detection.scanner import ScanResult
    from gate.intake import inspect_file

    inspection = inspect_file(upload["file_path"], scanner.settings.intake)
    if not inspection.ok:
        log.warning("likelihood screening: %s no longer passes intake (%s)", upload["id"], inspection.error.code)
        return None
    meta = hub_meta(upload)
    result = ScanResult(upload["file_path"], inspection,
                        name_hits=scanner.name_hits(inspection, upload["filename"] or upload["file_path"], meta))
    return result, scanner.probe_request(result, meta["trigger_words"])


def judge_gains(scanner, upload: dict, result, character_id: str, gains: list) -> tuple[Hit, object] | None:
    """The live rule on the gains measured for one character: the hit and its reason when the gain clears the
    calibrated threshold (judged beside the upload's own likelihood matches)."""
    from gate.review.feedback import cleared_characters

    decision = decide(matches=[], name_hits=[h for h in result.name_hits if h.character_id == character_id],
                      characters=scanner.policies(), thresholds=scanner.thresholds,
                      cleared=cleared_characters(scanner.db, result.inspection.fingerprints.tensor_hash),
                      likelihood=[*gains, *(g for g in _stored_gains(upload) if g.character_id != character_id)])
    reason = next((r for r in decision.reasons if r.kind == "likelihood_match" and r.character_id == character_id
                   and r.verdict != Verdict.ALLOW), None)
    if reason is None:
        return None
    before = Verdict(upload["verdict"] or "allow")
    after = max(before, reason.verdict, key=lambda v: v.severity)  # screening escalates, never clears
    return Hit(upload["id"], str(before), str(after), reason.details["certainty"], 0, 0, 0.0, 0.0, []), reason


def _judge_likelihood(scanner, upload: dict, character_id: str, references: list) -> tuple[Hit, object] | None:
    """In this process: load one upload's LoRA again and measure the character's references with and without
    it (the scanner's engine renders)."""
    from probes.contract import UnsupportedLora

    screened = likelihood_request(scanner, upload)
    if screened is None:
        return None
    result, request = screened
    try:
        gains = scanner.engine.likelihood_gains(
            upload["file_path"], lora_format=request["lora_format"], family=request["family"],
            modules=request["modules"], triggers=request["terms"]["trigger"], references=references)
    except UnsupportedLora:
        return None
    return judge_gains(scanner, upload, result, character_id, gains)


def _reference_dicts(scanner, character_id: str) -> list[dict]:
    """One character's reference set, as a probe request carries it."""
    return [r for r in scanner.reference_sets() if r["character_id"] == character_id]


def _character_references(scanner, character_id: str) -> list:
    from probes.likelihood import ReferenceSet

    return [ReferenceSet.from_dict(r) for r in _reference_dicts(scanner, character_id)]


def likelihood_screen(db: Database, character_id: str, settings: Settings | None = None, *,
                      cause: str = "registered", scanner=None, queues=None) -> Screening:
    """Screen the back catalogue for one character with the likelihood probe: every decided upload the engine
    rendered before is loaded again and measured on this character's references alone (a few UNet calls per
    reference; nothing is rendered). It catches what stored renders cannot show (too poor to embed, or a
    trigger the probes never used), at the cost of the GPU's time per upload. With `queues`, one catalogue job
    per upload (`likelihood_screen_upload`; the run's `done` counts them); else here, one after another."""
    started = time.perf_counter()
    settings = settings or load_settings()
    character = get_character(db, character_id)
    scanner = _fresh_scanner(settings, db, scanner)
    screening = Screening(None, character_id, f"{cause}: likelihood")
    references = _character_references(scanner, character_id)
    screening.skipped = _cannot_screen(character, scanner, references)
    if screening.skipped:
        return screening
    upload_ids = [row["id"] for row in db.query(
        "select u.id from uploads u join catalogue_scans s on s.upload_id = u.id where s.renders > 0 "
        "and u.state = ? and coalesce(u.verdict, 'allow') != 'block' order by u.created_at", [UploadState.DECIDED])]
    screening.screened = screening.candidates = len(upload_ids)
    with writing(db):  # recorded first, each upload as it is done: a run cut short keeps what it did
        screening.id = db["screenings"].insert({
            "character_id": character_id, "cause": screening.cause, "embedder": scanner.engine.probe_set.id,
            "thresholds": json.dumps(scanner.thresholds.to_dict()), "screened": screening.screened, "renders": 0,
            "candidates": screening.candidates, "hits": 0, "changed": 0, "seconds": 0.0, "done": 0,
            "created_at": _now()}).last_pk
        db["screening_items"].insert_all({"screening_id": screening.id, "upload_id": upload_id, "state": "pending"}
                                         for upload_id in upload_ids)
    if queues is not None:
        return _queue_items(queues, screening, upload_ids)
    return _judge_items(db, scanner, screening, character, references, upload_ids, started)


def _fresh_scanner(settings: Settings, db: Database, scanner=None):
    """The given scanner (a local command's, which renders) with the registry re-read, or this job thread's
    matcher (which renders nothing: the uploads go to probe workers)."""
    if scanner is None:
        from gate.pipeline.jobs import job_matcher

        return job_matcher(settings)
    scanner.refresh()
    return scanner


def _cannot_screen(character, scanner, references: list) -> str:
    """Why a likelihood screening cannot run here ('' when it can)."""
    return ("the character is retired" if character.status != "active" else
            "the probe set has no likelihood probe" if scanner.engine.likelihood is None else
            "the character has no reference images" if not references else "")


def likelihood_resume(db: Database, screening_id: int, settings: Settings | None = None, *, scanner=None,
                      queues=None) -> Screening:
    """Carry on a likelihood screening whose jobs were lost (a catalogue worker killed, Redis restarted): its
    uploads not yet judged, queued again with `queues` (those whose job will still run are left to it), else
    judged here. Judging is idempotent: an upload judged twice is recorded and counted once."""
    started = time.perf_counter()
    settings = settings or load_settings()
    run = next(iter(db["screenings"].rows_where("id = ?", [screening_id])), None)
    if run is None or not str(run["cause"]).endswith(": likelihood"):
        raise ScreeningError(f"no likelihood screening {screening_id}")
    if not db.execute("select 1 from screening_items where screening_id = ?", [screening_id]).fetchone():
        raise ScreeningError(f"screening {screening_id} predates resumable screenings (no record of its uploads): "
                             f"run `gate catalogue screen {run['character_id']} --likelihood` instead")
    from probes.probe_set import load_probe_set

    probe_set = load_probe_set(settings.probe_set).id
    if run["embedder"] != probe_set:  # its gains would not be comparable: a new run, not a resumed one
        raise ScreeningError(f"screening {screening_id} ran with {run['embedder']}; this gate has {probe_set}")
    pending = [row["upload_id"] for row in db.query(
        "select upload_id from screening_items where screening_id = ? and state = 'pending' order by rowid",
        [screening_id])]
    screening = Screening(screening_id, run["character_id"], run["cause"])
    if queues is not None:  # only ids are handed over: no models are loaded here
        from gate.pipeline.reconcile import chain_alive, worker_alive

        alive = worker_alive(queues)
        pending = [u for u in pending if not chain_alive(queues, _likelihood_job(screening_id, u), alive)]
        screening.screened = screening.candidates = len(pending)
        return _queue_items(queues, screening, pending)
    character = get_character(db, run["character_id"])
    scanner = _fresh_scanner(settings, db, scanner)
    references = _character_references(scanner, character.id)
    reason = _cannot_screen(character, scanner, references)
    if reason:  # judging would mark every upload done without looking at it
        raise ScreeningError(f"screening {screening_id} cannot go on here: {reason}")
    screening.screened = screening.candidates = len(pending)
    return _judge_items(db, scanner, screening, character, references, pending, started)


def _likelihood_job(screening_id: int, upload_id: str) -> str:
    return f"likelihood-{screening_id}-{upload_id}"


def _queue_items(queues, screening: Screening, upload_ids: list[str]) -> Screening:
    """One catalogue job per upload, in one Redis round trip."""
    from redis.exceptions import RedisError

    try:
        queues.enqueue_many([(CATALOGUE, "gate.catalogue.screening.likelihood_screen_upload", (screening.id, upload_id),
                              _likelihood_job(screening.id, upload_id)) for upload_id in upload_ids])
    except RedisError as exc:  # recorded as pending: `gate catalogue resume` queues them once Redis is back
        raise ScreeningError(f"screening {screening.id}: its uploads could not be queued ({exc}); "
                             f"`gate catalogue resume {screening.id} --queue` once Redis is back") from None
    return screening


def _judge_items(db: Database, scanner, screening: Screening, character, references: list, upload_ids: list[str],
                 started: float) -> Screening:
    """Each upload judged here, one after another."""
    for upload_id in upload_ids:
        hit = _likelihood_screen_one(db, scanner, screening.id, character, references, upload_id)
        if hit is not None:
            screening.hits.append(hit)
    screening.seconds = time.perf_counter() - started
    log.info("%s", screening.summary())
    return screening


def likelihood_screen_upload(screening_id: int, upload_id: str) -> str:
    """Catalogue-queue job: one upload of a likelihood screening (`likelihood_screen` with queues), screened
    here and measured by a probe worker (`likelihood_measured` judges)."""
    from gate.pipeline.jobs import job_matcher, reply_to, upload_request
    from gate.queues import context

    settings = context().settings
    db = thread_record(settings)
    matcher = job_matcher(settings)  # the registry re-read: the character may have changed since
    character = get_character(db, db["screenings"].get(screening_id)["character_id"])
    references = _reference_dicts(matcher, character.id)
    upload = _still_to_judge(db, character, references, upload_id)
    screened = likelihood_request(matcher, upload) if upload is not None else None
    if screened is None:
        _record_judgement(db, screening_id, character, upload_id, None)
        return "skipped"
    job = _likelihood_job(screening_id, upload_id)
    request = upload_request(settings, upload, {**screened[1], "references": references},
                             reply_to(CATALOGUE, "gate.catalogue.screening.likelihood_measured",
                                      [screening_id, upload_id], f"{job}-conclude"))
    context().queues.enqueue(CATALOGUE_PROBE, "probes.jobs.likelihood_upload", request, job_id=f"{job}-probe")
    return "measuring"


def likelihood_measured(screening_id: int, upload_id: str, measured: dict) -> str:
    """Catalogue-queue job: a probe worker's likelihood gains for one upload of a screening, judged and
    recorded (a hit escalates the upload)."""
    from gate.pipeline.jobs import job_matcher
    from gate.queues import context
    from probes.likelihood import CharacterGain

    settings = context().settings
    db = thread_record(settings)
    matcher = job_matcher(settings)
    if measured.get("probe_set") != matcher.engine.probe_set.id:
        raise ScreeningError(f"the probe worker measured with {measured.get('probe_set')}, this gate has "
                             f"{matcher.engine.probe_set.id}")
    character = get_character(db, db["screenings"].get(screening_id)["character_id"])
    references = _reference_dicts(matcher, character.id)
    upload = _still_to_judge(db, character, references, upload_id)  # as it is now, not when measured
    found = None
    if upload is not None and not measured.get("unsupported"):
        screened = likelihood_request(matcher, upload)
        if screened is not None:
            gains = [CharacterGain.from_dict(g) for g in measured.get("gains") or []]
            found = judge_gains(matcher, upload, screened[0], character.id, gains)
    hit = _record_judgement(db, screening_id, character, upload_id, found)
    return "no hit" if hit is None else f"{hit.verdict_before} -> {hit.verdict_after}"


def _still_to_judge(db: Database, character, references: list, upload_id: str) -> dict | None:
    """The upload as it is now, if a screening should still judge it (decided, not blocked, the character
    active with references)."""
    upload = next(iter(db["uploads"].rows_where("id = ?", [upload_id])), None)
    if (upload is not None and upload["state"] == UploadState.DECIDED and upload["verdict"] != "block"
            and character.status == "active" and references):
        return upload
    return None


def _likelihood_screen_one(db: Database, scanner, screening_id: int, character, references: list,
                           upload_id: str) -> Hit | None:
    """Judge one upload here (the scanner's engine measures it) and record the judgement."""
    upload = _still_to_judge(db, character, references, upload_id)
    found = _judge_likelihood(scanner, upload, character.id, references) if upload is not None else None
    return _record_judgement(db, screening_id, character, upload_id, found)


def _record_judgement(db: Database, screening_id: int, character, upload_id: str,
                      found: tuple[Hit, object] | None) -> Hit | None:
    """Record the hit (escalating the upload) and count the upload done, in one transaction."""
    with writing(db):
        if found is not None and not db.execute("select 1 from screening_hits where screening_id = ? and "
                                                "upload_id = ?", [screening_id, upload_id]).fetchone():
            hit, reason = found
            db["screening_hits"].insert({
                "screening_id": screening_id, "upload_id": hit.upload_id, "verdict_before": hit.verdict_before,
                "verdict_after": hit.verdict_after, "changed": int(hit.changed), "certainty": hit.certainty,
                "matched": 0, "rendered": 0, "best_score": reason.details["gain"], "best_lift": 0.0, "renders": "[]",
                "likelihood": json.dumps(reason.details)})
            if hit.changed:
                _escalate(db, hit, reason, character.name, screening_id)
        first_time = db.execute("update screening_items set state = 'done', finished_at = ? where screening_id = ? "
                                "and upload_id = ? and state = 'pending'", [_now(), screening_id, upload_id]).rowcount
        legacy = not first_time and not db.execute("select 1 from screening_items where screening_id = ? limit 1",
                                                   [screening_id]).fetchone()  # a run from before m008
        # The run's counters: done once per upload, the hits from its hits (a job run twice counts once); its
        # time, from its start.
        db.execute(
            "update screenings set done = min(screened, coalesce(done, 0) + :more), "
            "hits = (select count(*) from screening_hits where screening_id = :id), "
            "changed = (select count(*) from screening_hits where screening_id = :id and changed), "
            "seconds = round((julianday('now') - julianday(created_at)) * 86400, 4) where id = :id",
            {"id": screening_id, "more": int(bool(first_time) or legacy)})
    return found[0] if found is not None else None


# ---------------------------------------------------------------------------------------------------------
# Reports for rights holders


def character_reports(db: Database, character_id: str, limit: int = 20) -> list[dict]:
    """A character's screenings, newest first, each with the uploads that showed the character."""
    get_character(db, character_id)
    reports = []
    for run in db["screenings"].rows_where("character_id = ?", [character_id], order_by="id desc", limit=limit):
        hits = []
        for hit in db.query(
                "select h.*, u.hub, u.model_id, u.version_id, u.title, u.uploader, u.filename from screening_hits h "
                "join uploads u on u.id = h.upload_id where h.screening_id = ? order by h.best_score desc",
                [run["id"]]):
            hits.append({"upload_id": hit["upload_id"], "hub": hit["hub"], "model_id": hit["model_id"],
                         "version_id": hit["version_id"], "title": hit["title"], "uploader": hit["uploader"],
                         "filename": hit["filename"], "verdict_before": hit["verdict_before"],
                         "verdict_after": hit["verdict_after"], "changed": bool(hit["changed"]),
                         "certainty": hit["certainty"], "matched": hit["matched"], "rendered": hit["rendered"],
                         "best_score": hit["best_score"], "best_lift": hit["best_lift"],
                         "renders": json.loads(hit["renders"]),
                         "likelihood": json.loads(hit["likelihood"]) if hit.get("likelihood") else None})
        reports.append({"screening": run["id"], "character": character_id, "cause": run["cause"],
                        "at": run["created_at"], "embedder": run["embedder"], "screened": run["screened"],
                        "renders": run["renders"], "candidates": run["candidates"], "hits": hits,
                        "changed": run["changed"], "seconds": run["seconds"], "done": run.get("done"),
                        "thresholds": json.loads(run["thresholds"])})
    return reports
