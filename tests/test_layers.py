"""The library's layers: no module imports a layer above its own, and no import circle.

Every import counts, at the top of a module or inside a function, so hiding one in a function
does not get it past the check. The layers, from the bottom (``lib/patchmix/``):

- **base** — ``config`` (typed settings, validated), ``registry`` (named entries),
  ``atomic`` (files written whole): import nothing of the project but each other;
- **data** — data sets, audio, features, the synthetic set: base only;
- **model** — the AST, Patch-Mix, the losses, augmentations: pure torch, base only;
- **methods** — the training methods, written with the model's pieces;
- **engine** — training, the run cache, metrics and scoring;
- **companion** — what the notebooks, the run plan and the reproduction check use;
- **cli** — the command line, above everything.

Run it alone with ``.venv/bin/python -m pytest tests/test_layers.py``.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "lib" / "patchmix"

LAYERS: dict[str, set[str]] = {  # layer → the layers it may import (itself included)
    "base": {"base"},
    "data": {"base", "data"},
    "model": {"base", "model"},
    "methods": {"base", "model", "methods"},
    "engine": {"base", "data", "model", "methods", "engine"},
    "companion": {"base", "data", "model", "methods", "engine", "companion"},
    "cli": {"base", "data", "model", "methods", "engine", "companion", "cli"},
}
BASE = {"patchmix", "patchmix.config", "patchmix.registry", "patchmix.atomic"}
CLI = {"patchmix.cli", "patchmix.__main__"}


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = ("patchmix", *path.relative_to(PACKAGE).with_suffix("").parts)
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


MODULES = _modules()


def layer(module: str) -> str:
    """The layer of a module of the package."""
    if module in BASE:
        return "base"
    if module in CLI:
        return "cli"
    top = module.split(".")[1]
    if top not in LAYERS:
        raise AssertionError(f"{module} is in no layer: add it to tests/test_layers.py")
    return top


def imports_in(source: str, package: str) -> set[str]:
    """The project modules a file imports anywhere, at the top or inside a function: a name
    imported from a package counts as its submodule when it is one. `package` is the package
    the file is in (for relative imports)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from . import x, from ..data import y
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base
                     for a in node.names]
        else:
            continue
        found |= {n for n in names if n.split(".")[0] == "patchmix"}
    return found


def imports(module: str) -> set[str]:
    """The project modules `module` imports (`imports_in` of its file)."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = imports_in(path.read_text(encoding="utf-8"), package)
    unknown = found - set(MODULES)
    assert not unknown, f"{module} imports {sorted(unknown)}, which do not exist"
    return found - {module}


def upward(graph: dict[str, set[str]]) -> list[str]:
    """Every import of `graph` (module → what it imports) against the layers."""
    return [f"{m} ({layer(m)}) imports {d} ({layer(d)})" for m, deps in sorted(graph.items())
            for d in sorted(deps) if layer(d) not in LAYERS[layer(m)]]


GRAPH = {m: imports(m) for m in MODULES}


def test_no_module_imports_a_layer_above_its_own():
    wrong = upward(GRAPH)
    assert not wrong, "imports against the layers:\n" + "\n".join(wrong)


def test_there_is_no_import_circle():
    # depth-first search; a module met again while still on the path closes a circle
    state: dict[str, str] = {}
    path: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = "open"
        path.append(m)
        for d in sorted(GRAPH[m]):
            if state.get(d) == "open":
                return path[path.index(d):] + [d]
            if d not in state and (circle := visit(d)):
                return circle
        state[m] = "done"
        path.pop()
        return None

    for m in sorted(GRAPH):
        if m not in state:
            circle = visit(m)
            assert circle is None, "import circle: " + " → ".join(circle)


def test_the_check_sees_imports_hidden_in_functions_and_relative_ones():
    # the trick that once hid a circle (an import inside a function) is an import here too
    hidden = "import torch\n\ndef f():\n    from patchmix.engine.train import Run\n"
    assert imports_in(hidden, "patchmix.model") == {"patchmix.engine.train"}
    assert upward({"patchmix.model.ast": {"patchmix.engine.train"}}) == [
        "patchmix.model.ast (model) imports patchmix.engine.train (engine)"]
    assert upward({"patchmix.model.ast": {"patchmix.data.audio"}})  # model is pure torch
    relative = "from . import lesson\nfrom ..data import dataset\nfrom ..config import profile\n"
    assert imports_in(relative, "patchmix.companion") == {
        "patchmix.companion.lesson", "patchmix.data.dataset", "patchmix.config"}
    assert imports_in("from patchmix.companion import plots\n", "patchmix") == {
        "patchmix.companion.plots"}


@pytest.mark.parametrize("module", ["patchmix.config", "patchmix.registry"])
def test_the_base_imports_no_torch_and_nothing_above_it(module):
    code = (f"import sys, importlib; importlib.import_module({module!r}); "
            "print(' '.join(sorted(m for m in sys.modules "
            "if m.split('.')[0] in ('torch', 'timm', 'patchmix'))))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True).stdout.split()
    assert set(loaded) <= BASE, f"import {module} also loads {sorted(set(loaded) - BASE)}"
