"""The `gate` command: a thin shell over the library, one module per command group (common.py holds what
they share). Heavy imports happen inside commands, so that `gate inspect` starts in a fraction of a second and
never loads torch."""

from __future__ import annotations

import click

from gate.cli import blocklist, catalogue, characters, images, scanning, service
from gate.cli.deliveries import deliveries
from gate.cli.people import audit_group, tokens, users
from gate.cli.repeat import repeat_group


class ConfigInvalid(click.ClickException):
    """A bad setting stops any command with exit 2 (click's usage status): the operator's to fix, not a crash."""

    exit_code = 2


class GateGroup(click.Group):
    """Converts the library's typed errors into CLI messages at the edge: no tracebacks for expected failures."""

    def invoke(self, ctx: click.Context):
        from gate.config import ConfigError
        from gate.errors import GateError

        try:
            return super().invoke(ctx)
        except ConfigError as exc:
            raise ConfigInvalid(exc.message) from None
        except GateError as exc:
            raise click.ClickException(f"{exc.code}: {exc.message}") from None


@click.group(cls=GateGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="lora-gate")
def main() -> None:
    """LoRA Gate: Content ID for LoRAs. Inspect, scan and gate LoRA uploads."""


for command in (scanning.inspect, scanning.scan, images.screen_images, scanning.calibrate, characters.characters,
                service.serve, service.deliver, blocklist.blocklist_group, service.worker, service.status,
                service.db_group, repeat_group, catalogue.catalogue_group, catalogue.rescan, users, tokens,
                audit_group, deliveries, images.datasets):
    main.add_command(command)
