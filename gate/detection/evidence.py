"""Evidence a person would rather look at than read: a contact sheet (PNG) and a small HTML page.

Each row: the probe render with the LoRA, the base render for the same prompt and seed, the matched
reference, and the scores. The renders most like the characters the decision names come first; the
likelihood probe's gains per character follow the reasons.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from gate.registry.images import ImageError, check_image

CELL = 160  # pixels per image on the sheet: tiny fixture renders are enlarged to be judged by eye
ROWS = 8


def _cell(image: np.ndarray | None) -> Image.Image:
    if image is None:
        return Image.new("RGB", (CELL, CELL), (235, 235, 235))
    return Image.fromarray(image).convert("RGB").resize((CELL, CELL), Image.Resampling.NEAREST)


def _rows(result) -> list[dict]:
    """The renders to show: those most like a character the decision flags (best first), then the renders
    nearest any character."""
    outcome, references = result.outcome, result.references
    from gate.detection.matching import score

    lora, base = score(outcome.lora_embeddings, references), score(outcome.base_embeddings, references)
    if lora.similarity.size == 0:
        return []
    reasons = result.decision.reasons if result.decision else []
    flagged = list(dict.fromkeys(references.character_ids.index(r.character_id) for r in reasons
                                 if r.verdict != "allow" and r.character_id in references.character_ids))
    picks: list[tuple[int, int]] = []  # (render, character)
    for c in flagged:
        picks += [(int(i), c) for i in np.argsort(-lora.similarity[:, c])[: max(1, ROWS // len(flagged))]]
    shown = {i for i, _ in picks}
    picks += [(int(i), int(lora.similarity[i].argmax())) for i in np.argsort(-lora.similarity.max(axis=1))
              if int(i) not in shown]
    rows = []
    for index, c in picks[:ROWS]:
        reference = int(lora.nearest_reference[index, c])
        rows.append({
            "probe": outcome.probes[index], "render": outcome.lora_images[index], "base": outcome.base_images[index],
            "character": references.character_ids[c], "score": float(lora.similarity[index, c]),
            "base_score": float(base.similarity[index, c]),
            "nearest": references.character_ids[int(lora.similarity[index].argmax())],
            "reference": references.paths[reference] if references.paths else None,
        })
    return rows


def most_changed(outcome, count: int = 6) -> tuple[list[int], np.ndarray]:
    """The probes whose render the LoRA changed most against the base render of the same prompt and seed (in
    the embedder's space), whatever they look like: what the LoRA draws, a tree or Ultraman."""
    lora = outcome.lora_embeddings / np.linalg.norm(outcome.lora_embeddings, axis=1, keepdims=True).clip(1e-9)
    base = outcome.base_embeddings / np.linalg.norm(outcome.base_embeddings, axis=1, keepdims=True).clip(1e-9)
    change = 1.0 - (lora * base).sum(axis=1)
    return [int(i) for i in np.argsort(-change)[:count]], change


def counted(row: dict, thresholds, names: dict) -> tuple[bool | None, str]:
    """Whether a render counted towards a match of the character it is shown with, and why (None: the scan's
    thresholds are not known)."""
    if thresholds is None:
        return None, "not judged here: the thresholds were not kept"
    name = names.get(row["character"], row["character"])
    if row["nearest"] != row["character"]:
        return False, f"not counted for {name}: the render is nearer {names.get(row['nearest'], row['nearest'])}"
    if row["score"] < thresholds.render_score:
        return False, f"not counted: similarity {row['score']:.3f} is below the threshold {thresholds.render_score:.3f}"
    if row["score"] - row["base_score"] < thresholds.lift:
        return False, (f"not counted: {row['score'] - row['base_score']:+.3f} above the base render, under the "
                       f"{thresholds.lift:.3f} needed")
    return True, f"counted: a match for {name}"


LIKELIER_CHARACTERS, LIKELIER_IMAGES = 8, 3  # the likelihood rows shown with images, and images per row


def _likelier_references(gain: dict, paths: list[str], out_dir: Path, rank: int) -> list[dict]:
    """The character's reference images this LoRA made likeliest (highest gain first), copied beside the
    evidence as likelier_<rank>_<k>.png; none when the registry changed since the probe (the gains would be
    another set's)."""
    if len(paths) != len(gain["reference_gains"]):
        return []
    order = sorted(range(len(paths)), key=lambda k: -gain["reference_gains"][k])[:LIKELIER_IMAGES]
    shown = []
    for k in order:
        try:
            image = check_image(paths[k]).rgb()
        except (ImageError, OSError):  # a reference gone or changed on disk: the numbers still stand
            continue
        name = f"likelier_{rank:02d}_{len(shown)}.png"
        _cell(image).save(out_dir / name)
        shown.append({"image": name, "gain": round(gain["reference_gains"][k], 4)})
    return shown


def write_evidence(result, characters: dict, out_dir: str | Path, title: str | None = None,
                   thresholds=None) -> tuple[Path, Path]:
    """Write contact_sheet.png and index.html for one scan; returns their paths. `title`: what the page is
    headed with (the hub's title or the uploaded file's name), else the scanned file's name. `thresholds`: the
    ones the scan was judged by, kept beside the evidence so a person sees where the LoRA fell between them."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    names = {cid: character.name for cid, character in characters.items()}  # an unknown id shows as itself
    rows = _rows(result) if result.outcome is not None else []
    label_width = 360
    sheet = Image.new("RGB", (3 * CELL + label_width, max(1, len(rows)) * CELL + 30), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((8, 8), f"{Path(result.path).name}: {result.verdict}   (LoRA render | base render | reference)",
              fill="black")
    html_rows, described = [], []
    for i, row in enumerate(rows):
        top = 30 + i * CELL
        reference = check_image(row["reference"]).rgb() if row["reference"] else None
        for j, image in enumerate((row["render"], row["base"], reference)):
            sheet.paste(_cell(image), (j * CELL, top))
        name = names.get(row["character"], row["character"])
        matched, why = counted(row, thresholds, names)
        lines = [f"prompt: {row['probe'].prompt[:40]}", f"seed {row['probe'].seed}", f"compared with: {name}",
                 f"score {row['score']:.3f}  base {row['base_score']:.3f}"]
        for k, line in enumerate(lines):
            draw.text((3 * CELL + 10, top + 10 + 18 * k), line, fill="black")
        for kind, image in (("render", row["render"]), ("base", row["base"])):
            _cell(image).save(out_dir / f"{i:02d}_{kind}.png")
        if reference is not None:
            _cell(reference).save(out_dir / f"{i:02d}_reference.png")
        described.append({"render": f"{i:02d}_render.png", "base": f"{i:02d}_base.png",
                          "reference": f"{i:02d}_reference.png" if reference is not None else None,
                          "prompt": row["probe"].prompt, "seed": row["probe"].seed, "character": row["character"],
                          "character_name": name, "score": round(row["score"], 4),
                          "base_score": round(row["base_score"], 4), "counted": matched, "why": why})
        html_rows.append(
            f"<tr><td><img src='{i:02d}_render.png'></td><td><img src='{i:02d}_base.png'></td>"
            f"<td><img src='{i:02d}_reference.png' alt='no reference'></td>"
            f"<td>{html.escape(row['probe'].prompt)}<br>seed {row['probe'].seed}<br><b>{html.escape(name)}</b><br>"
            f"score {row['score']:.3f} (base {row['base_score']:.3f})<br>{html.escape(why)}</td></tr>"
        )
    sheet_path = out_dir / "contact_sheet.png"
    sheet.save(sheet_path)
    drawn = []
    if result.outcome is not None and len(result.outcome.probes):
        picks, change = most_changed(result.outcome)
        for rank, index in enumerate(picks):
            probe = result.outcome.probes[index]
            _cell(result.outcome.lora_images[index]).save(out_dir / f"drawn_{rank:02d}.png")
            _cell(result.outcome.base_images[index]).save(out_dir / f"drawn_{rank:02d}_base.png")
            drawn.append({"render": f"drawn_{rank:02d}.png", "base": f"drawn_{rank:02d}_base.png",
                          "prompt": probe.prompt, "seed": probe.seed, "change": round(float(change[index]), 4)})
    # The same rows as data, for the moderators' item view (issue 7), with the static signals intake found.
    inspection = result.inspection.to_dict()
    intake = {k: inspection.get(k) for k in ("format", "base_family", "rank", "tensor_hash", "file_sha256")}
    gains = [{**g.to_dict(), "name": names.get(g.character_id, g.character_id)}
             for g in (result.outcome.likelihood if result.outcome is not None else [])]
    for rank, gain in enumerate(gains[:LIKELIER_CHARACTERS]):
        gain["likelier"] = _likelier_references(gain, result.reference_images.get(gain["character_id"], []),
                                                out_dir, rank)
    hits = [{"character": h.character_id, "name": names.get(h.character_id, h.character_id), "field": h.field,
             "text": h.text} for h in result.name_hits]
    judged_by = {k: v for k, v in thresholds.to_dict().items() if k != "provenance"} if thresholds else None
    scope = result.outcome.scope if result.outcome is not None else {}
    (out_dir / "evidence.json").write_text(json.dumps({"rows": described, "intake": intake, "likelihood": gains,
                                                       "name_hits": hits, "thresholds": judged_by,
                                                       "drawn": drawn, "scope": scope}, ensure_ascii=False))
    decided = result.decision.reasons if result.decision else []
    reasons = "".join(f"<li>{html.escape(r.message)}</li>" for r in decided)
    if gains:  # the likelihood probe's evidence: how much likelier the LoRA makes each character's references
        reasons += ("</ul><h2>Likelihood probe</h2><table><tr><th>character</th><th>gain</th><th>prompt</th>"
                    "<th>per reference</th></tr>" + "".join(
                        f"<tr><td>{html.escape(g['name'])}{' (screened only)' if g['screened'] else ''}</td>"
                        f"<td>{g['gain']:+.1%}</td>"
                        f"<td>{_prompt_cell(g)}</td><td>"
                        + "".join(f"<img src='{x['image']}' title='{x['gain']:+.1%}' style='width:80px'>"
                                  for x in g.get("likelier", []))
                        + f"<br>{' '.join(f'{x:+.2f}' for x in g['reference_gains'])}</td></tr>" for g in gains[:5])
                    + "</table>" + _scope_line(scope) + "<ul>")
    shown_previews = []
    for n, preview in enumerate(result.previews):  # the hub's preview images, and what each shows
        try:
            _cell(check_image(preview["path"]).rgb()).save(out_dir / f"preview_{n:02d}.png")
        except (ImageError, OSError):
            continue
        shows = names.get(preview["shows"], preview["shows"]) if preview["shows"] else None
        caption = html.escape(preview["name"]) + (f"<br><b>shows {html.escape(shows)}</b>" if shows else "")
        beside = ""
        if shows and preview.get("reference_path"):  # the reference it came closest to, beside it
            try:
                _cell(check_image(preview["reference_path"]).rgb()).save(out_dir / f"preview_{n:02d}_reference.png")
                beside = f"<img src='preview_{n:02d}_reference.png' title='the closest reference'>"
                caption += (f" (score {preview['score']:.3f} over its closest reference views; the closest is "
                            f"beside it, {html.escape(Path(preview['reference_path']).name)})")
            except (ImageError, OSError):
                pass
        shown_previews.append(f"<figure style='display:inline-block'><img src='preview_{n:02d}.png'>{beside}"
                              f"<figcaption>{caption}</figcaption></figure>")
    page = out_dir / "index.html"
    heading = title or Path(result.path).name
    page.write_text(
        f"<!doctype html><meta charset='utf-8'><title>{html.escape(heading)} · LoRA Gate evidence</title>"
        "<style>body{font:15px system-ui;margin:2em}td{padding:6px;vertical-align:top}img{width:160px;"
        "image-rendering:pixelated}</style>"
        f"<h1>{html.escape(heading)}: {html.escape(str(result.verdict))}</h1><ul>{reasons}</ul>"
        + ("<h2>What the LoRA draws</h2><p>The renders it changed most against the base model's, whatever they "
           "show:</p><p>" + "".join(f"<img src='{d['render']}' title='{html.escape(d['prompt'])}'>" for d in drawn)
           + "</p>" if drawn else "")
        + ("<h2>The hub's preview images</h2><p>" + "".join(shown_previews) + "</p>" if shown_previews else "")
        + "<h2>Renders and references</h2>"
        "<table><tr><th>with the LoRA</th><th>base model</th><th>reference</th><th></th></tr>"
        + "".join(html_rows) + "</table>"
    )
    return sheet_path, page


def _prompt_cell(gain: dict) -> str:
    """The prompt a gain was measured under, or the trigger the probe recovered (a soft prompt, named by its
    nearest vocabulary pieces: a hint, not the uploader's word); and the part of a merge, or the strength, it was
    measured at."""
    cell = (f"<b>recovered trigger</b><br><small>soft prompt; nearest pieces <code>{html.escape(gain['prompt'])}"
            "</code></small>" if gain.get("recovered") else html.escape(gain["prompt"]))
    if gain.get("part"):
        cell += f"<br><small>on {html.escape(gain['part'])} of the LoRA, alone</small>"
    elif float(gain.get("strength", 1.0)) != 1.0:
        cell += f"<br><small>the LoRA at strength {float(gain['strength']):g}</small>"
    return cell


def _scope_line(scope: dict) -> str:
    """What the likelihood probe covered: the registry version, and how much of it the renders' index kept."""
    if not scope.get("registry"):
        return ""
    return (f"<p>Measured against registry {html.escape(str(scope['registry']))}: {scope.get('characters')} "
            f"characters, {scope.get('shortlisted')} screened, {len(scope.get('measured', []))} measured in full."
            "</p>")
