"""The `gate` command: a thin shell over the library. Heavy imports happen inside commands, so that
`gate inspect` starts in a fraction of a second and never loads torch."""

from __future__ import annotations

import json
import sys

import click

EXIT_REFUSED = 3


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="lora-gate")
def main() -> None:
    """LoRA Gate: Content ID for LoRAs. Inspect, scan and gate LoRA uploads."""


def _summary(result: dict) -> str:
    lines = [click.style(result["path"], bold=True)]
    if not result["ok"]:
        error = result["error"]
        lines.append(f"  {click.style('refused', fg='red', bold=True)}   {error['code']}: {error['message']}")
        return "\n".join(lines)
    lora, meta = result["lora"], result["metadata"]
    parts = ", ".join(f"{name} {count}" for name, count in lora["components"].items())
    dora = " DoRA" if lora["dora"] else ""
    lines.append(
        f"  {click.style('accepted', fg='green', bold=True)}  {result['format']}{dora} LoRA for "
        f"{result['base_family']} (rank {result['rank']}, {lora['modules']} modules: {parts})"
    )
    lines.append(f"  family    evidence: {'; '.join(result['family']['evidence']) or 'none'}; "
                 f"metadata claims {result['family']['claimed'] or 'nothing'}")
    dtypes = ", ".join(result["dtypes"])
    lines.append(f"  size      {result['file_size']:,} bytes, {result['tensors']} tensors ({dtypes})")
    lines.append(f"  sha256    {result['file_sha256']}")
    lines.append(f"  tensors#  {result['tensor_hash']}")
    named = [f"{label} {value!r}" for label, value in (
        ("title", meta["title"]), ("output", meta["output_name"]),
        ("trigger", ", ".join(meta["trigger_phrases"]) or None),
    ) if value]
    if meta["top_tags"]:
        named.append("tags " + ", ".join(f"{tag}({count})" for tag, count in meta["top_tags"][:6]))
    lines.append(f"  metadata  {'; '.join(named) or 'none'}")
    lines.extend(f"  {click.style('warning', fg='yellow')}   {w}" for w in result["warnings"])
    return "\n".join(lines)


@main.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per file (JSON Lines).")
def inspect(paths: tuple[str, ...], as_json: bool) -> None:
    """Check LoRA files without loading them: format, base family, metadata, hashes.

    Exit status 0 when every file is an acceptable LoRA, 3 when any was refused.

    Example: gate inspect --json my_lora.safetensors
    """
    from gate.config import load_settings
    from gate.intake import inspect_file

    limits = load_settings().intake
    refused = False
    for path in paths:
        result = inspect_file(path, limits).to_dict()
        refused |= not result["ok"]
        click.echo(json.dumps(result, ensure_ascii=False) if as_json else _summary(result))
    sys.exit(EXIT_REFUSED if refused else 0)
