"""The README tells the truth: every command, refusal code and setting is documented there."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from gate.cli import main
from gate.config import Settings
from gate.errors import Refusal

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def _commands(group: click.Group, prefix: str = "gate") -> list[tuple[str, click.Command]]:
    found = []
    for name, command in group.commands.items():
        found.append((f"{prefix} {name}", command))
        if isinstance(command, click.Group):
            found.extend(_commands(command, f"{prefix} {name}"))
    return found


@pytest.mark.parametrize("name,command", _commands(main), ids=lambda v: v if isinstance(v, str) else "")
def test_every_command_has_help_with_an_example_and_is_in_the_readme(name, command):
    result = CliRunner().invoke(main, [*name.split()[1:], "--help"])
    assert result.exit_code == 0
    assert command.help
    if not isinstance(command, click.Group):
        assert "Example:" in command.help
    assert re.search(rf"(^|[`\n]){re.escape(name)}\b", README)


@pytest.mark.parametrize("code", [str(c) for c in Refusal])
def test_every_refusal_code_is_documented(code):
    assert re.search(rf"\| `{code}` \|", README)


def _setting_names(cls, prefix="GATE_"):
    for field in dataclasses.fields(cls):
        default = field.default_factory() if field.default_factory is not dataclasses.MISSING else field.default
        if dataclasses.is_dataclass(default):
            yield from _setting_names(type(default), f"{prefix}{field.name.upper()}_")
        else:
            yield f"{prefix}{field.name.upper()}"


@pytest.mark.parametrize("variable", list(_setting_names(Settings)))
def test_every_setting_is_documented(variable):
    assert f"`{variable}`" in README
