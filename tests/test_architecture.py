"""The project's shape, checked: the import contracts (import-linter), no import cycles between modules, intake
as a leaf, and a web process that never loads torch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parent.parent
TORCH_SIDE = ("torch", "diffusers", "transformers", "peft", "accelerate")


def _graph() -> grimp.ImportGraph:
    return grimp.build_graph("gate", "probes", include_external_packages=True)


def test_import_contracts_hold():
    run = subprocess.run([sys.executable, "-c", "from importlinter.cli import lint_imports_command; "
                          "lint_imports_command(['--no-cache'])"], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert "0 broken" in run.stdout


def _cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    modules = sorted(m for m in graph.modules if m.split(".")[0] in ("gate", "probes"))
    edges = {m: sorted(i for i in graph.find_modules_directly_imported_by(m) if i in modules) for m in modules}
    index, low, on_stack, stack, found, counter = {}, {}, set(), [], [], 0
    for root in modules:
        if root in index:
            continue
        work = [(root, iter(edges[root]))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(edges[child])))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_no_import_cycles_between_modules():
    assert _cycles(_graph()) == []


def test_cycle_finder_finds_a_cycle():
    graph = grimp.ImportGraph()
    for module in ("gate", "gate.a", "gate.b", "gate.c"):
        graph.add_module(module)
    graph.add_import(importer="gate.a", imported="gate.b")
    graph.add_import(importer="gate.b", imported="gate.a")
    graph.add_import(importer="gate.c", imported="gate.a")
    assert _cycles(graph) == [["gate.a", "gate.b"]]


def test_intake_imports_only_the_standard_library_numpy_and_its_own_errors():
    graph = _graph()
    allowed_gate = {"gate.errors"}
    for module in graph.find_descendants("gate.intake") | {"gate.intake"}:
        for imported in graph.find_modules_directly_imported_by(module):
            top = imported.split(".")[0]
            if top in ("gate", "probes"):
                assert imported.startswith("gate.intake") or imported in allowed_gate, (module, imported)
            else:
                assert top == "numpy" or top in sys.stdlib_module_names, (module, imported)


def test_the_web_process_loads_no_torch(tmp_path):
    """Building the web app and importing every blueprint leaves torch and its stack out of the process."""
    code = ("import sys, json; from gate.app import create_app; "
            f"create_app({{'data_dir': {str(tmp_path)!r}}}); "
            f"print(json.dumps(sorted(m for m in {TORCH_SIDE!r} if m in sys.modules)))")
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.strip().splitlines()[-1] == "[]"


def test_the_web_gate_installs_without_torch():
    """`pip install lora-gate` is the web gate, intake and the record; torch and its stack come with [probes]."""
    import re
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = {re.split(r"[<>=!~\[ ;]", spec)[0].lower() for spec in project["dependencies"]}
    assert not names & set(TORCH_SIDE)
    assert set(TORCH_SIDE) <= {re.split(r"[<>=!~\[ ;]", spec)[0].lower()
                               for spec in project["optional-dependencies"]["probes"]}
    assert all(re.search(r"<\s*\d", spec) for spec in project["dependencies"]), "every dependency caps its major"


def test_the_tests_mirror_the_packages():
    """A newcomer finds a package's tests under the same name: tests/gate/<package>/ for every gate/<package>/."""
    packages = {p.parent.name for p in (ROOT / "gate").glob("*/__init__.py")}
    tested = {p.name for p in (ROOT / "tests" / "gate").iterdir() if p.is_dir() and any(p.glob("test_*.py"))}
    assert packages <= tested, f"packages without a tests/gate/<package>/: {sorted(packages - tested)}"
