"""The evidence page of a screened set: each matching image beside the reference it came closest to, with
its score, and the set's reasons (what a moderator and the hub read)."""

from __future__ import annotations

import html
import io
from pathlib import Path

from PIL import Image, ImageDraw

from gate.images.screen import Screened, matched_region, reference_region
from gate.registry.images import ImageError, check_image
from probes.pixels import as_shown

THUMB = 192


def _thumb(data: bytes | None, target: Path, region: list[int] | None = None) -> bool:
    """A thumbnail of the image, with the region that matched outlined (when a crop, not the whole, did)."""
    if data is None:
        return False
    with Image.open(io.BytesIO(data)) as image:
        shown = as_shown(image)  # turned and flattened as it was matched: the region is in its pixels
    width, height = shown.size
    thumb = shown.resize((THUMB, THUMB), Image.NEAREST)
    if region:
        left, top, right, bottom = region
        box = (left * THUMB // width, top * THUMB // height, right * THUMB // width - 1, bottom * THUMB // height - 1)
        ImageDraw.Draw(thumb).rectangle(box, outline=(255, 0, 200), width=3)
    thumb.save(target)
    return True


def write_image_evidence(screened: Screened, out_dir: str | Path, title: str) -> Path:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for match in screened.verdict.matches:  # files named by the image's position in the set
        n, item = match.index, screened.bundle.items[match.index]
        region = matched_region(match.view, item.image.width, item.image.height)
        _thumb(item.image.data, out_dir / f"image_{n:05d}.png", region)
        try:
            reference = check_image(screened.reference_paths[match.reference]).data
        except (ImageError, IndexError):
            reference = None
        part = reference_region(screened.references, match.reference) if reference else None
        has_reference = _thumb(reference, out_dir / f"reference_{n:05d}.png", part)
        name = screened.names.get(match.character_id, match.character_id)
        rows.append(f"<tr><td><img src='image_{n:05d}.png'></td><td>"
                    + (f"<img src='reference_{n:05d}.png'>" if has_reference else "no reference")
                    + f"</td><td>{html.escape(item.name)}<br><b>{html.escape(name)}</b><br>score "
                      f"{match.score:.3f}{' (strong)' if match.strong else ''}"
                    + ("<br>in the outlined part" if region else "")
                    + ("<br>like the outlined part of the reference" if part else "") + "</td></tr>")
    reasons = "".join(f"<li>{html.escape(r['message'])}</li>" for r in screened.verdict.reasons)
    refused = "".join(f"<li>{html.escape(r['name'])}: {html.escape(r['code'])}</li>" for r in screened.bundle.refused)
    page = out_dir / "index.html"
    page.write_text(
        f"<!doctype html><meta charset='utf-8'><title>{html.escape(title)} · LoRA Gate image evidence</title>"
        "<style>body{font:15px system-ui;margin:2em}td{padding:6px;vertical-align:top}img{width:192px;"
        "image-rendering:pixelated}</style>"
        f"<h1>{html.escape(title)}: {html.escape(screened.verdict.verdict)}</h1><ul>{reasons}</ul>"
        f"<h2>Images that resemble a registered character ({len(rows)} of {len(screened.bundle.items)})</h2>"
        "<table><tr><th>image</th><th>closest reference</th><th></th></tr>" + "".join(rows) + "</table>"
        + (f"<h2>Refused</h2><ul>{refused}</ul>" if refused else ""))
    return page
