"""`gate deliveries`: what Hugging Face webhooks and URL uploads became (a thin shell over gate.hubs.deliveries)."""

from __future__ import annotations

import json

import click

from gate.cli import common


@click.command("deliveries")
@click.argument("delivery_id", required=False)
@click.option("--limit", default=20, show_default=True, help="how many recent deliveries to list")
def deliveries(delivery_id: str | None, limit: int) -> None:
    """Show one delivery (state, uploads, error) as JSON, or list the most recent ones.

    Example: gate deliveries dl_4a693f50514e657d
    """
    from gate.hubs.deliveries import DeliveryNotFound, get_delivery, status

    db = common.record()
    if delivery_id:
        try:
            click.echo(json.dumps(status(db, get_delivery(db, delivery_id)), indent=1, ensure_ascii=False))
        except DeliveryNotFound as exc:
            raise click.ClickException(exc.message) from None
        return
    for row in db["deliveries"].rows_where(order_by="created_at desc", limit=limit):
        target = f"{row['repo_id']}@{(row['revision'] or '')[:12]}" if row["kind"] != "url" else row["url"]
        detail = row["error_code"] or row["reason"] or ""
        click.echo(f"{row['id']}  {row['created_at']}  {row['kind']:<11} {row['state']:<9} {target}  {detail}")
