"""`gate users`, `gate tokens`, `gate audit`: accounts, API tokens and the audit log, from a shell.

Everything done here is audited too, as `cli:<os user>` with the operator's role."""

from __future__ import annotations

import json
import sys

import click

from gate.cli import common
from gate.errors import GateError


@click.group(name="users")
def users() -> None:
    """People's and machines' accounts: moderator, operator, admin, rights_holder, hub."""


@users.command("add")
@click.argument("username")
@click.option("--role", required=True, type=click.Choice(["moderator", "operator", "admin", "rights_holder", "hub"]),
              help="What the account may do.")
@click.option("--party", default=None, help="For rights_holder: the rights holder it speaks for; for hub: the hub "
              "name its uploads carry (default: the username).")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input (else prompted).")
def users_add(username: str, role: str, party: str | None, password_stdin: bool) -> None:
    """Create an account; people get a password (asked for, never on the command line).

    Example: gate users add alice --role moderator
    """
    from gate.review.accounts import PEOPLE, add_account

    password = None
    if role == "rights_holder" and not party:  # said before a password is asked for
        raise click.UsageError("a rights_holder account needs --party: the rights holder it speaks for")
    if role in PEOPLE:
        if password_stdin:
            password = sys.stdin.readline().rstrip("\n")
        else:
            password = click.prompt("password", hide_input=True, confirmation_prompt=True)
    row = add_account(common.record(), common.actor(), username, role, password, party)
    click.echo(f"added {row['username']} ({row['role']}{', ' + row['party'] if row['party'] else ''})")


@users.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def users_list(as_json: bool) -> None:
    """List accounts.

    Example: gate users list --json
    """
    from gate.review.accounts import list_accounts

    found = list_accounts(common.record())
    if as_json:
        click.echo(json.dumps(found, indent=1))
        return
    for row in found:
        state = "disabled" if row["disabled"] else "active"
        click.echo(f"{row['username']:<24} {row['role']:<14} {state:<9} {row['party'] or ''}")


@users.command("disable")
@click.argument("username")
@click.option("--reason", required=True, help="Why (kept in the audit log).")
@click.option("--enable", is_flag=True, help="Re-enable instead.")
def users_disable(username: str, reason: str, enable: bool) -> None:
    """Disable an account: its sessions end and its tokens stop working at once.

    Example: gate users disable bob --reason "left the team"
    """
    from gate.review.accounts import set_disabled

    row = set_disabled(common.record(), common.actor(), username, not enable, reason)
    click.echo(f"{row['username']} {'disabled' if row['disabled'] else 'enabled'}")


@users.command("password")
@click.argument("username")
@click.option("--reason", required=True, help="Why (kept in the audit log).")
@click.option("--password-stdin", is_flag=True, help="Read the new password from standard input (else prompted).")
def users_password(username: str, reason: str, password_stdin: bool) -> None:
    """Set a person's password; every session of the account ends at once.

    Example: gate users password alice --reason "reset on request"
    """
    from gate.review.accounts import set_password

    if password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = click.prompt("new password", hide_input=True, confirmation_prompt=True)
    row = set_password(common.record(), common.actor(), username, password, reason)
    click.echo(f"{row['username']}: password changed; its sessions ended")


@click.group(name="tokens")
def tokens() -> None:
    """API tokens for hubs and rights holders (stored as their sha256 only)."""


@tokens.command("create")
@click.argument("username")
@click.option("--name", default="", help="What the token is for.")
def tokens_create(username: str, name: str) -> None:
    """Create a token and print it once: it cannot be shown again.

    Example: gate tokens create civitai --name "dispute relay"
    """
    from gate.review.accounts import create_token

    token, row = create_token(common.record(), common.actor(), username, name)
    click.echo(f"token {row['id']} for {username} (shown once, keep it now):", err=True)
    click.echo(token)


@tokens.command("list")
def tokens_list() -> None:
    """List tokens (never the tokens themselves).

    Example: gate tokens list
    """
    from gate.review.accounts import tokens as all_tokens

    for row in all_tokens(common.record()):
        state = f"revoked {row['revoked_at']}" if row["revoked_at"] else "live"
        click.echo(f"{row['id']:>5}  {row['username']:<24} {row['name'] or '':<24} {state}")


@tokens.command("revoke")
@click.argument("token_id", type=int)
@click.option("--reason", required=True, help="Why (kept in the audit log).")
def tokens_revoke(token_id: int, reason: str) -> None:
    """Revoke a token by its id (from `gate tokens list`).

    Example: gate tokens revoke 3 --reason "leaked in a CI log"
    """
    from gate.review.accounts import revoke_token

    row = revoke_token(common.record(), common.actor(), token_id, reason)
    click.echo(f"token {row['id']} revoked at {row['revoked_at']}")


@click.group(name="audit")
def audit_group() -> None:
    """The append-only audit log: export it, verify its hash chain."""


@audit_group.command("export")
@click.option("--format", "fmt", type=click.Choice(["csv", "json"]), default="json", show_default=True,
              help="Output format.")
@click.option("--out", type=click.Path(dir_okay=False, writable=True), default=None, help="File (default: stdout).")
def audit_export(fmt: str, out: str | None) -> None:
    """Export the whole audit log, oldest first, for legal requests.

    Example: gate audit export --format csv --out audit.csv
    """
    from gate.record.audit import export

    body = export(common.record(), fmt)
    if out:
        with open(out, "w", encoding="utf-8", newline="") as target:
            target.write(body)
    else:
        click.echo(body, nl=False)


@audit_group.command("head")
def audit_head() -> None:
    """Print the newest entry as ID:SHA256, an anchor to keep somewhere the gate cannot write.

    Example: gate audit head >> /mnt/elsewhere/gate-audit-anchors
    """
    from gate.record.audit import head

    latest = head(common.record())
    if latest is None:
        click.echo("the audit log is empty", err=True)
        sys.exit(1)
    click.echo(f"{latest['id']}:{latest['sha256']}")


@audit_group.command("verify")
@click.option("--anchor", "anchors", multiple=True, metavar="ID:SHA256",
              help="An entry's id and hash kept elsewhere (`gate audit head`, hubs' audit_head); repeatable.")
def audit_verify(anchors: tuple[str, ...]) -> None:
    """Check the hash chain: exit status 1 and the first bad entry if any row was edited or removed, or an
    anchored entry is gone or different (the log cut back, the chain recomputed).

    Example: gate audit verify --anchor 1042:9f86d0...
    """
    from gate.record.audit import parse_anchor, verify

    try:
        parsed = [parse_anchor(anchor) for anchor in anchors]
    except GateError as exc:
        raise click.UsageError(exc.message) from None
    result = verify(common.record(), parsed)
    if result.ok:
        click.echo(f"ok: {result.rows} entries, chain intact")
        return
    click.echo(f"TAMPERED: entry {result.first_bad} {result.problem}", err=True)
    sys.exit(1)
