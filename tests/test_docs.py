"""The docs tell the truth: the generated reference pages match the code, every command, refusal code and
setting is documented, the README stays short, no page keeps a development log, and the site builds."""

from __future__ import annotations

import dataclasses
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from gate.cli import main
from gate.config import Settings
from gate.errors import Refusal

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
README = (ROOT / "README.md").read_text()
REFERENCE = sorted((DOCS / "reference").glob("*.md"))


def _page(name: str) -> str:
    return (DOCS / "reference" / name).read_text()


def test_the_reference_pages_match_the_code():
    """cog regenerates each page in memory; any difference means the page is stale."""
    result = subprocess.run(
        [sys.executable, "-m", "cogapp", "--check", "-I", "docs", *map(str, REFERENCE)],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
    )
    assert result.returncode == 0, (
        "docs/reference/ is out of date with the code: run `make docs` and commit the result.\n"
        + result.stdout[-4000:] + result.stderr[-4000:]
    )


def _commands(group: click.Group, prefix: str = "gate") -> list[tuple[str, click.Command]]:
    found = []
    for name, command in group.commands.items():
        found.append((f"{prefix} {name}", command))
        if isinstance(command, click.Group):
            found.extend(_commands(command, f"{prefix} {name}"))
    return found


@pytest.mark.parametrize("name,command", _commands(main), ids=lambda v: v if isinstance(v, str) else "")
def test_every_command_has_help_with_an_example_and_is_in_the_cli_reference(name, command):
    result = CliRunner().invoke(main, [*name.split()[1:], "--help"])
    assert result.exit_code == 0
    assert command.help
    if not isinstance(command, click.Group):
        assert "Example:" in command.help
    assert re.search(rf"^#+ {re.escape(name)}$", _page("cli.md"), re.MULTILINE)


@pytest.mark.parametrize("code", [str(c) for c in Refusal])
def test_every_refusal_code_is_documented_with_its_meaning(code):
    row = re.search(rf"^\| `{code}` \| (.*) \|$", _page("refusal-codes.md"), re.MULTILINE)
    assert row and row.group(1).strip() not in ("", "—"), f"{code} has no meaning: add one in docs/refgen.py"


def _setting_names(cls, prefix="GATE_"):
    for field in dataclasses.fields(cls):
        default = field.default_factory() if field.default_factory is not dataclasses.MISSING else field.default
        if dataclasses.is_dataclass(default):
            yield from _setting_names(type(default), f"{prefix}{field.name.upper()}_")
        else:
            yield f"{prefix}{field.name.upper()}"


@pytest.mark.parametrize("variable", list(_setting_names(Settings)))
def test_every_setting_is_documented(variable):
    assert f"| `{variable}` |" in _page("settings.md")


def test_the_readme_is_short_and_names_no_session():
    assert len(README.splitlines()) <= 150
    assert not re.search(r"\bsession \d+", README, re.IGNORECASE)
    assert not re.search(r"\b(this|that|an earlier|a later) session\b", README, re.IGNORECASE)


def test_the_readme_shows_the_two_quickstart_commands():
    quickstart = README.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"^make \w+", quickstart.split("```sh", 1)[1].split("```", 1)[0], re.MULTILINE)
    assert commands == ["make run", "make test"]


@pytest.mark.parametrize("page", sorted(DOCS.rglob("*.md")), ids=lambda p: str(p.relative_to(DOCS)))
def test_no_page_keeps_a_development_log(page):
    text = page.read_text()
    assert not re.search(r"\bsession \d+", text, re.IGNORECASE)
    assert not re.search(r"\b(this|that|an earlier|a later) session\b", text, re.IGNORECASE)


def test_the_links_from_the_readme_into_docs_resolve():
    for target in re.findall(r"\]\((docs/[^)#]+)", README):
        assert (ROOT / target).is_file(), target


@pytest.mark.skipif(importlib.util.find_spec("mkdocs") is None,
                    reason="mkdocs is not installed (pip install -e '.[dev]' installs it)")
def test_the_site_builds_strictly(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(ROOT / "mkdocs.yml"),
         "--site-dir", str(tmp_path / "site")],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
