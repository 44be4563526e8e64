"""`gate blocklist`: LoRAs refused by their tensor hash, whatever their name or metadata."""

from __future__ import annotations

import json

import click

from gate.cli import common


@click.group(name="blocklist")
def blocklist_group() -> None:
    """Tensor hashes of blocked LoRAs: re-uploads are blocked at intake, without rendering."""


@blocklist_group.command("add")
@click.argument("tensor_hash")
@click.option("--reason", required=True, help="Why it is blocked (kept with the entry).")
@click.option("--source", default="operator", show_default=True, help="On whose word.")
def blocklist_add(tensor_hash: str, reason: str, source: str) -> None:
    """Block a LoRA's tensor content (the tensor_hash `gate inspect` reports).

    Example: gate blocklist add 3f2a...e9 --reason "Ultraman LoRA, takedown 2026-11-02"
    """
    from gate.record import audit
    from gate.record.db import writing
    from gate.registry.blocklist import add

    db = common.record()
    with writing(db):
        add(db, tensor_hash, reason, source)
        audit.record(db, common.actor(), "blocklist.add", "tensor_hash", tensor_hash.strip().lower(), reason, None,
                     {"source": source})
    click.echo(f"blocked {tensor_hash}")


@blocklist_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def blocklist_list(as_json: bool) -> None:
    """List blocked tensor hashes.

    Example: gate blocklist list --json
    """
    from gate.registry.blocklist import entries

    found = entries(common.record())
    if as_json:
        click.echo(json.dumps(found, indent=1, ensure_ascii=False))
        return
    for entry in found:
        click.echo(f"{entry['tensor_hash']}  {entry['created_at']}  {entry['source']}: {entry['reason']}")
