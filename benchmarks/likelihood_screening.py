"""Back-catalogue screening for characters registered after the uploads were scanned: the likelihood probe over
the catalogue against re-scanning every upload in full (`gate rescan`, what finding such a LoRA took before),
measured in the same run.

The record: every fixture-world LoRA recorded, scanned and decided as the gate does, with the registry as shipped
(so the LoRAs of the three original characters are allowed). Then the three originals are registered (the world's
reference images, policy block) and the catalogue is screened for them:

- baseline: each decided upload re-scanned once in full against the new registry (renders, embeddings, the
  likelihood probe over every character); one pass serves all three characters;
- the gate: for each new character, as on registration, the stored-render screen (`registry_changed`) and then
  `likelihood_screen` (each upload loaded again, the character's references measured with and without it).

Both rows say which uploads they would flag for the new characters. One run, on this machine's device.

    python -m benchmarks.likelihood_screening
"""

from __future__ import annotations

import hashlib
import tempfile
import time

import torch

from gate.catalogue.screening import likelihood_screen, registry_changed
from gate.config import load_settings
from gate.detection.scanner import Scanner
from gate.pipeline.outcome import record_decision
from gate.record.db import open_db
from gate.record.uploads import record_upload
from gate.registry.characters import add_character
from gate.registry.world import World, seed_registry
from probes.engine import ProbeEngine
from probes.probe_set import load_probe_set


def main() -> None:
    settings = load_settings({"data_dir": tempfile.mkdtemp(prefix="gate-likelihood-screen-")})
    world = World.load(settings.world_dir)
    db = open_db(settings.db_path)
    seed_registry(db, world, settings.references_dir)
    engine = ProbeEngine(settings.base_model, settings.embedder, load_probe_set(settings.probe_set), settings.device)
    scanner = Scanner(settings, db, engine)
    uploads = {}
    for lora in world.loras():
        path = world.path(lora["path"])
        data = path.read_bytes()
        upload = record_upload(db, "benchmark", {"hub": "fixture-hub", "model_id": lora["id"], "title": lora["title"]},
                               path, hashlib.sha256(data).hexdigest(), len(data), path.name).upload
        record_decision(settings, db, scanner, upload["id"], scanner.scan(path, filename=path.name, conclude=False))
        uploads[upload["id"]] = lora
        print(f"  recorded and scanned {lora['id']}", flush=True)
    originals = [c for c in world.characters(registered=False)]
    for character in originals:
        add_character(db, settings.references_dir, name=character["name"], rights_holder=character["rights_holder"],
                      policy="block", references=[world.path(p) for p in character["references"]],
                      character_id=character["id"], embed=engine.embed, embedder_id=engine.embedder_id)
    new = {c["id"] for c in originals}
    scanner.refresh()

    started = time.perf_counter()
    rescanned = {}
    for upload_id, lora in uploads.items():
        path = world.path(lora["path"])
        result = scanner.scan(path, filename=path.name)
        rescanned[upload_id] = {r.character_id for r in result.decision.reasons
                                if r.character_id in new and r.verdict != "allow"}
    baseline = time.perf_counter() - started

    renders_seconds = likelihood_seconds = 0.0
    screened = {}
    for character in originals:
        mark = time.perf_counter()
        by_renders = registry_changed(db, character["id"], settings, cause="registered", embed=engine.embed)
        renders_seconds += time.perf_counter() - mark
        mark = time.perf_counter()
        by_likelihood = likelihood_screen(db, character["id"], settings, cause="registered", scanner=scanner)
        likelihood_seconds += time.perf_counter() - mark
        for hit in by_renders.hits + by_likelihood.hits:
            screened.setdefault(hit.upload_id, set()).add(character["id"])

    def flagged(found: dict) -> str:
        pairs = sorted(f"{uploads[u]['id']}->{c}" for u, cs in found.items() for c in cs)
        right = sum(uploads[u]["character"] == c for u, cs in found.items() for c in cs)
        return f"{right} right of {len(pairs)}: {', '.join(pairs) or '-'}"

    print(f"\n{len(uploads)} uploads, {len(originals)} characters registered afterwards, probe set "
          f"{engine.probe_set.id}, device {engine.renderer.device}, torch threads {torch.get_num_threads()}\n")
    print(f"| {'screening the catalogue for the new characters':<62} | {'seconds':>8} | {'s per upload':>12} "
          f"| {'speed-up':>8} | flagged (LoRA->character) |")
    print(f"|{'-' * 64}|{'-' * 10}|{'-' * 14}|{'-' * 10}|{'-' * 27}|")
    rows = [("baseline: every upload re-scanned in full, once for all three", baseline, rescanned),
            ("gate: stored renders, then the likelihood probe, per character", renders_seconds + likelihood_seconds,
             screened)]
    for name, seconds, found in rows:
        print(f"| {name:<62} | {seconds:>8.1f} | {seconds / len(uploads):>12.3f} | {baseline / seconds:>7.2f}x "
              f"| {flagged(found)} |")
    print(f"\n(the gate's time: stored renders {renders_seconds:.1f} s, likelihood probe {likelihood_seconds:.1f} s)")

if __name__ == "__main__":
    main()
