"""Reference pages generated from the code, run by cog (`make docs`; `tests/test_docs.py` checks them).

Each function returns Markdown for one page of docs/reference/. The generators find what they describe by
walking the `gate` and `probes` packages, not by module paths, so they keep working while modules move:

- the CLI from the console script that pyproject.toml names;
- the settings from the `Settings` dataclass and the `#` comments above its fields;
- the error codes from the exception classes that carry a `code`, and the codes their raise sites pass;
- the endpoints from the Flask app that `create_app` builds.

Modules whose top-level imports reach torch (directly or through another module of the project) are never
imported: the gate side must not need torch, and neither should its documentation.
"""

from __future__ import annotations

import ast
import dataclasses
import enum
import importlib
import importlib.util
import inspect
import io
import pkgutil
import re
import sys
import tempfile
import tokenize
import tomllib
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

PACKAGES = ("gate", "probes")
# Third-party packages that are heavy (GPU side); a module importing one at its top level is not imported.
HEAVY = {"torch", "diffusers", "transformers", "peft", "accelerate"}
MiB = 1024 * 1024


# --------------------------------------------------------------------------------------------------------
# Finding the project's modules without importing the GPU side

def _this_checkout() -> None:
    """Import the project from this checkout, not from another install of it (an editable one elsewhere).

    cog restores sys.path after each file, so this runs at the start of every generator, not once.
    """
    if sys.path[:1] != [str(ROOT)]:
        sys.path.insert(0, str(ROOT))
    for package in PACKAGES:
        module = sys.modules.get(package)
        if module is not None and not Path(module.__file__).resolve().is_relative_to(ROOT):
            raise RuntimeError(f"{package} was imported from {module.__file__}, not from {ROOT}")


def _spec_source(name: str) -> tuple[str, bool] | None:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        return None
    return Path(spec.origin).read_text(encoding="utf-8"), spec.submodule_search_locations is not None


@cache
def _module_names() -> tuple[str, ...]:
    """Every module of the project's packages, found on disk (nothing imported but the packages' own paths)."""
    _this_checkout()
    names = []
    for package in PACKAGES:
        spec = importlib.util.find_spec(package)
        if spec is None:
            continue
        names.append(package)
        for info in pkgutil.walk_packages(spec.submodule_search_locations, prefix=f"{package}.",
                                          onerror=lambda _name: None):
            if not info.name.endswith("__main__"):
                names.append(info.name)
    return tuple(sorted(names))


def _top_level_imports(source: str, name: str, is_package: bool) -> set[str]:
    """Absolute names a module imports at import time (not inside functions)."""
    found: set[str] = set()
    package = name if is_package else name.rpartition(".")[0]

    def visit(statements):
        for node in statements:
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")
                    parent = ".".join(parts[: len(parts) - node.level + 1])
                    base = f"{parent}.{base}" if base else parent
                found.add(base)
                found.update(f"{base}.{alias.name}" for alias in node.names)
            elif isinstance(node, (ast.If, ast.Try, ast.With)):
                for field in ("body", "orelse", "finalbody", "handlers"):
                    for child in getattr(node, field, []):
                        visit(child.body if isinstance(child, ast.ExceptHandler) else [child])

    visit(ast.parse(source).body)
    return found


@cache
def _heavy(name: str, seen: frozenset = frozenset()) -> bool:
    """Whether importing the module would import a heavy package, directly or through the project."""
    found = _spec_source(name)
    if found is None:
        return False
    source, is_package = found
    for imported in _top_level_imports(source, name, is_package):
        root = imported.split(".")[0]
        if root in HEAVY:
            return True
        if root in PACKAGES and imported != name and imported not in seen and imported in _module_names():
            if _heavy(imported, seen | {name}):
                return True
    return False


@cache
def _modules() -> tuple:
    """The project's modules that import without the GPU side, imported."""
    modules = []
    for name in _module_names():
        if _heavy(name):
            continue
        try:
            modules.append(importlib.import_module(name))
        except ModuleNotFoundError as exc:
            if (exc.name or "").split(".")[0] in PACKAGES:
                raise
            continue  # an optional third-party dependency that is not installed here
    return tuple(modules)


def _defined(kind) -> list:
    """(module, name, object) for every object defined in the project's light modules that `kind` accepts."""
    found = []
    for module in _modules():
        for name, value in vars(module).items():
            if getattr(value, "__module__", None) == module.__name__ and kind(value):
                found.append((module, name, value))
    return found


def _find_class(name: str, kind=lambda value: True):
    for _module, found, value in _defined(inspect.isclass):
        if found == name and kind(value):
            return value
    raise LookupError(f"no class {name} in {', '.join(PACKAGES)}")


# --------------------------------------------------------------------------------------------------------
# Small Markdown helpers

def _cell(text: object) -> str:
    """Text for one table cell: one line, pipes escaped."""
    text = " ".join(str(text).split())
    return text.replace("|", "\\|") if text else "—"


def _code(text: object) -> str:
    text = str(text)
    return f"`` {text} ``" if "`" in text else f"`{text}`"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _first_paragraph(doc: str | None) -> str:
    if not doc:
        return ""
    return " ".join(inspect.cleandoc(doc).split("\n\n")[0].split())


# --------------------------------------------------------------------------------------------------------
# The CLI

def _console_script() -> tuple[str, object]:
    """The `gate` command as pyproject.toml installs it: (its name, the click group)."""
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    name, target = sorted(scripts.items())[0]
    module, _, attribute = target.partition(":")
    return name, getattr(importlib.import_module(module), attribute)


def commands() -> list[tuple[str, object, object]]:
    """(full name, command, click context) for the group and every command below it, sorted by name."""
    import click

    name, group = _console_script()
    found = []

    def walk(command, ctx, full):
        found.append((full, command, ctx))
        if isinstance(command, click.Group):
            for sub_name, sub in command.commands.items():
                walk(sub, click.Context(sub, info_name=sub_name, parent=ctx), f"{full} {sub_name}")

    walk(group, click.Context(group, info_name=name), name)
    return sorted(found, key=lambda item: item[0].split())


def _help_markdown(text: str) -> str:
    """A command's docstring as Markdown: paragraphs as text, an `Example:` paragraph as a shell block."""
    out = []
    for paragraph in inspect.cleandoc(text).split("\n\n"):
        paragraph = paragraph.replace("\b\n", "").strip()
        if paragraph.startswith("Example:"):
            example = paragraph.removeprefix("Example:").strip()
            out.append("Example:\n\n```sh\n" + "\n".join(line.strip() for line in example.splitlines()) + "\n```")
        elif paragraph:
            out.append(" ".join(paragraph.split()))
    return "\n\n".join(out)


def cli_reference() -> str:
    _this_checkout()
    import click

    parts = []
    for full, command, ctx in commands():
        level = "#" * min(2 + full.count(" ") - 1, 4) if " " in full else "##"
        parts.append(f"{level} {full}\n")
        parts.append("```\n" + command.get_usage(ctx).strip() + "\n```\n")
        if command.help:
            parts.append(_help_markdown(command.help) + "\n")
        help_option = command.get_help_option(ctx)
        options = []
        for param in command.get_params(ctx):
            if not isinstance(param, click.Option) or param is help_option or param.hidden:
                continue
            record = param.get_help_record(ctx)
            if record:
                flags, text = record
                options.append(f"- {_code(flags)}: {' '.join(text.split()) or '(no help)'}")
        if options:
            parts.append("Options:\n\n" + "\n".join(options) + "\n")
        if isinstance(command, click.Group):
            names = ", ".join(f"`{full} {name}`" for name in sorted(command.commands))
            parts.append(f"Commands: {names}.\n")
    return "\n".join(parts)


# --------------------------------------------------------------------------------------------------------
# Settings

def _comments_above(cls) -> dict[str, str]:
    """For each annotated field of a class, the `#` comment lines right above it in the source.

    A comment also covers the fields right below its own field (no blank line between) whose names begin
    with the same word, as in `login_max_failures` and `login_window_minutes` under one comment.
    """
    source = inspect.getsource(inspect.getmodule(cls))
    comments: dict[int, str] = {}
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            comments[token.start[0]] = token.string.lstrip("#").strip()
    lines = source.splitlines()
    tree = ast.parse(source)
    node = next(n for n in ast.walk(tree) if isinstance(n, ast.ClassDef) and n.name == cls.__name__)
    found: dict[str, str] = {}
    previous: tuple[str, int, str] | None = None  # (field name, last line, comment)
    for item in node.body:
        if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
            name, line = item.target.id, item.lineno
            above, row = [], line - 1
            while row in comments and lines[row - 1].lstrip().startswith("#"):
                above.insert(0, comments[row])
                row -= 1
            if above:
                found[name] = " ".join(above)
            elif previous and previous[1] == line - 1 and name.split("_")[0] == previous[0].split("_")[0]:
                found[name] = previous[2]
            if name in found:
                previous = (name, item.end_lineno or line, found[name])
            else:
                previous = None
    return found


def _default(value: object, name: str) -> str:
    if value is None or value == "":
        return "unset"
    if isinstance(value, Path):
        try:
            return _code(value.relative_to(ROOT))
        except ValueError:
            return _code(value)
    if isinstance(value, bool):
        return _code(str(value).lower())
    if isinstance(value, int) and "bytes" in name and value >= MiB and value % MiB == 0:
        mib = value // MiB
        human = f"{mib // 1024} GiB" if mib % 1024 == 0 else f"{mib} MiB"
        return f"{_code(value)} ({human})"
    if isinstance(value, enum.Enum):
        return _code(value.value)
    return _code(value)


def _type_name(annotation: object) -> str:
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))
    return text.replace(" | None", ", optional").replace("|", "or")


# What a setting means, for fields whose source carries no comment above them (keyed by the file key).
FIELD_NOTES = {
    "data_dir": "Where the gate keeps its record (`gate.db`) and its files.",
    "world_dir": "The embedded default's models, characters and calibration (the fixture world).",
    "embedder_dir": "A transformers vision model directory (CLIP, SigLIP, DINOv2, …), loaded offline; unset "
                    "means the fixture world's.",
    "probe_set": "A probe set name in `probes/sets/` or a path to a TOML file.",
    "device": "`cuda` or `cpu`; unset, CUDA (float16) where present, else the CPU (float32).",
    "intake.max_file_bytes": "Largest upload accepted.",
    "intake.max_header_bytes": "Largest safetensors header read.",
    "intake.max_metadata_bytes": "Largest `__metadata__` accepted.",
    "intake.max_tensors": "Most tensors in one file.",
    "intake.max_dims": "Most dimensions of one tensor.",
    "fetch.max_bytes": "Largest file fetched (also capped by `GATE_INTAKE_MAX_FILE_BYTES`).",
    "fetch.timeout_seconds": "The deadline for one file's download.",
    "fetch.connect_timeout_seconds": "The socket timeout for connecting and for each read.",
    "fetch.max_redirects": "Most redirects followed.",
}


def settings_rows(cls=None, env: str = "GATE_", key: str = "") -> list[tuple[str, list[str], object]]:
    """(section class, row, nested) in field order: one section per dataclass, nested ones after."""
    cls = cls or _find_class("Settings", dataclasses.is_dataclass)
    comments = _comments_above(cls)
    rows, nested = [], []
    section_doc = _first_paragraph(cls.__doc__)
    for field in dataclasses.fields(cls):
        if field.default_factory is not dataclasses.MISSING:
            default = field.default_factory()
        else:
            default = field.default
        variable, toml_key = f"{env}{field.name.upper()}", f"{key}{field.name}"
        if dataclasses.is_dataclass(default):
            nested.append((type(default), f"{variable}_", f"{toml_key}."))
            continue
        meaning = comments.get(field.name) or FIELD_NOTES.get(toml_key) or section_doc
        choices = field.metadata.get("choices") if field.metadata else None
        if choices:
            meaning += " Choices: " + ", ".join(_code(getattr(c, "value", c)) for c in choices) + "."
        rows.append([_code(variable), _code(toml_key), _cell(_type_name(field.type)),
                     _default(default, field.name), _cell(meaning)])
    sections = [(cls, rows, key.rstrip("."))]
    for nested_cls, nested_env, nested_key in nested:
        sections.extend(settings_rows(nested_cls, nested_env, nested_key))
    return sections


def setting_variables() -> list[str]:
    return [re.sub(r"`", "", row[0]) for _cls, rows, _key in settings_rows() for row in rows]


def settings_reference() -> str:
    _this_checkout()
    parts = []
    for cls, rows, key in settings_rows():
        title = f"`[{key}]`" if key else "General"
        doc = _first_paragraph(cls.__doc__)
        parts.append(f"## {title}\n")
        if doc:
            parts.append(doc + "\n")
        parts.append(_table(["variable", "file key", "type", "default", "meaning"], rows))
    return "\n".join(parts)


# --------------------------------------------------------------------------------------------------------
# Error codes

def _base_error():
    return _find_class("GateError", lambda value: issubclass(value, Exception))


def error_classes() -> list:
    """Exception classes of the project that carry a stable code: the GateError family, and any other
    exception class with a string `code` (the GPU side's outcomes, which must not import the gate)."""
    base = _base_error()
    found = {}
    for _module, _name, value in _defined(inspect.isclass):
        if issubclass(value, Exception) and (issubclass(value, base) or isinstance(vars(value).get("code"), str)):
            found[value.__qualname__] = value
    return [found[name] for name in sorted(found)]


def _message(node: ast.AST) -> str:
    """A message argument as text: f-string fields become `…`."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(v.value if isinstance(v, ast.Constant) else "…" for v in node.values)
    return ""


def _argument(cls, call: ast.Call, parameter: str) -> ast.AST | None:
    """The expression a call passes for one of the class's constructor parameters, by position or keyword."""
    for keyword in call.keywords:
        if keyword.arg == parameter:
            return keyword.value
    try:
        names = list(inspect.signature(cls).parameters)
    except (TypeError, ValueError):
        return None
    if parameter in names and names.index(parameter) < len(call.args):
        return call.args[names.index(parameter)]
    return None


def _raise_sites(classes) -> list[tuple[str, str, str]]:
    """(code, class name, message) for every call that builds one of the classes with a literal code,
    or with no code (the class's own), across the project's light modules."""
    from werkzeug.exceptions import HTTPException
    from werkzeug.http import HTTP_STATUS_CODES

    by_name = {cls.__name__: cls for cls in classes}
    sites = []
    for module in _modules():
        try:
            tree = ast.parse(inspect.getsource(module))
        except (OSError, TypeError):
            continue
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
            cls = by_name.get(name)
            if cls is None:
                http = getattr(module, name, None)
                if inspect.isclass(http) and issubclass(http, HTTPException) and http.code:
                    code = HTTP_STATUS_CODES.get(http.code, "error").lower().replace(" ", "_")
                    message = _message(node.args[0]) if node.args else ""
                    sites.append((code, f"HTTP {http.code}", message))
                continue
            code_node, message_node = _argument(cls, node, "code"), _argument(cls, node, "message")
            if code_node is None:
                code = vars(cls).get("code") or getattr(cls, "code", None)
            elif isinstance(code_node, ast.Constant) and isinstance(code_node.value, str):
                code = code_node.value
            else:
                continue  # a code computed at run time (intake's Refusal members are listed on their own)
            message = _message(message_node) if message_node is not None else ""
            sites.append((str(code), cls.__name__, message))
    return sites


def _http_status() -> dict[str, int]:
    """The web edge's status for each code (the rest are 400): gate.errors.HTTP_STATUS, which GateError.http_status
    reads."""
    from gate.errors import HTTP_STATUS

    return {str(code): int(value) for code, value in HTTP_STATUS.items()}


def error_codes() -> dict[str, dict]:
    """Every code the service's errors carry: its HTTP status, the classes raising it and a sample message."""
    classes = error_classes()
    status = _http_status()
    codes: dict[str, dict] = {}
    for cls in classes:
        code = vars(cls).get("code")
        if isinstance(code, str):
            codes.setdefault(code, {"classes": set(), "messages": set()})["classes"].add(cls.__name__)
    for code, where, message in _raise_sites(classes):
        entry = codes.setdefault(code, {"classes": set(), "messages": set()})
        entry["classes"].add(where)
        if message:
            entry["messages"].add(message)
    for code, entry in codes.items():
        http = next((w for w in entry["classes"] if w.startswith("HTTP ")), None)
        entry["status"] = int(http.split()[1]) if http else status.get(code, 400)
        entry["classes"] = sorted(w for w in entry["classes"] if not w.startswith("HTTP "))
    return dict(sorted(codes.items()))


def refusal_enum():
    return _find_class("Refusal", lambda value: issubclass(value, enum.Enum))


# What each intake refusal means, for members whose source carries no comment above them.
INTAKE_MEANINGS = {
    "file_empty": "zero bytes",
    "file_too_large": "over `GATE_INTAKE_MAX_FILE_BYTES`",
    "file_unreadable": "not a regular file, or an I/O error",
    "format_pickle": "a Python pickle (runs code when loaded)",
    "format_torch_zip": "a zip archive such as a torch `.pt`/`.ckpt` (pickles inside)",
    "format_unknown": "some other format (GGUF, gzip, image, executable, text, …)",
    "header_truncated": "the file ends before its header does",
    "header_length_invalid": "the header length is 0 or runs past the end of the file",
    "header_too_large": "the header length is over the gate's limit",
    "header_not_utf8": "the header is not UTF-8",
    "header_not_json": "not JSON, nested too deeply, `NaN` literals, or not starting with `{`",
    "header_not_object": "JSON, but not an object",
    "duplicate_tensor_name": "a tensor name appears twice",
    "tensor_entry_invalid": "an entry is not exactly `{dtype, shape, data_offsets}`",
    "too_many_tensors": "over the gate's tensor count limit (or more JSON containers than that many need)",
    "no_tensors": "the header declares no tensors",
    "dtype_unknown": "a dtype safetensors does not define",
    "shape_invalid": "negative, non-integer, too many dims, or overflowing size",
    "offsets_invalid": "`data_offsets` is not `[begin, end]` with `0 <= begin <= end`",
    "size_mismatch": "a byte range differs from shape x dtype size",
    "tensor_overlap": "two tensors share bytes",
    "data_gap": "bytes between tensors that belong to none",
    "data_truncated": "tensors extend past the end of the file",
    "trailing_bytes": "bytes after the last tensor",
    "metadata_invalid": "`__metadata__` is not a string-to-string map",
    "metadata_too_large": "`__metadata__` over the gate's limit",
    "non_finite_weights": "NaN or Inf in a weight",
    "not_a_lora": "valid safetensors, but not a LoRA (no LoRA tensors, or mostly other tensors)",
    "lora_pair_incomplete": "a module lacks one of its tensors (e.g. `lora_down` without `lora_up`)",
    "lora_shape_invalid": "a LoRA tensor of the wrong shape (e.g. a non-scalar alpha)",
    "lora_dtype_invalid": "a tensor that is not floating point (LoRA weights and extras alike)",
    "rank_mismatch": "paired tensors disagree on rank",
    "embedding_invalid": "a bundled textual-inversion embedding (`bundle_emb.…`) whose token is not one word of "
                         "letters, digits, `_`, `-`, `<`, `>` (at most 64), or whose vectors are not `[width]` or "
                         "`[n, width]`",
}


def intake_refusals() -> list[tuple[str, str]]:
    """(code, meaning) for every intake refusal, in the enum's order."""
    members = refusal_enum()
    comments = _comments_above(members)
    return [(str(member.value), comments.get(member.name) or INTAKE_MEANINGS.get(str(member.value), ""))
            for member in members]


def refusal_codes_reference() -> str:
    _this_checkout()
    refusals = _table(["code", "meaning"],
                      [[_code(code), _cell(meaning)] for code, meaning in intake_refusals()])
    intake_codes = {code for code, _meaning in intake_refusals()}
    rows = []
    for code, entry in error_codes().items():
        if code in intake_codes and not entry["messages"]:
            continue
        message = min(entry["messages"], key=lambda m: (len(m), m)) if entry["messages"] else ""
        rows.append([_code(code), str(entry["status"]), _cell(", ".join(entry["classes"])), _cell(message)])
    service = _table(["code", "HTTP", "raised as", "a message it carries"], rows)
    classes = []
    for cls in error_classes():
        code = getattr(cls, "code", "")
        classes.append([_code(cls.__name__), _code(code), _cell(_first_paragraph(cls.__doc__))])
    return ("## Intake refusals\n\n" + refusals + "\n## Service and CLI errors\n\n" + service
            + "\n## Error classes\n\n" + _table(["class", "default code", "what it is"], classes))


# --------------------------------------------------------------------------------------------------------
# Endpoints

def _app_factory():
    for _module, name, value in _defined(inspect.isfunction):
        if name == "create_app":
            return value
    raise LookupError("no create_app in the project")


def endpoints() -> list[dict]:
    """Every route of the web gate (Flask's own static route left out), sorted by path and method."""
    with tempfile.TemporaryDirectory() as data_dir:
        app = _app_factory()({"data_dir": data_dir})
        found = []
        for rule in app.url_map.iter_rules():
            if rule.endpoint == "static":
                continue
            view = app.view_functions[rule.endpoint]
            for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
                found.append({"method": method, "path": rule.rule, "doc": _first_paragraph(view.__doc__),
                              "blueprint": rule.endpoint.rpartition(".")[0] or "app"})
    order = {"GET": 0, "POST": 1, "PUT": 2, "PATCH": 3, "DELETE": 4}
    return sorted(found, key=lambda e: (e["path"], order.get(e["method"], 9), e["method"]))


def endpoints_reference() -> str:
    _this_checkout()
    rows = [[e["method"], _code(e["path"]), _cell(e["doc"]), _code(e["blueprint"])] for e in endpoints()]
    return _table(["method", "path", "what it does", "blueprint"], rows)
