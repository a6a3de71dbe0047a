"""The layers of rlft (docs/layers.toml, drawn in docs/architecture.md) hold, and no rlft module
imports itself back through others.

Pure file reading: the source is parsed, never imported (no torch). An import is every
`import rlft.x` / `from rlft.x import y` / `from . import y` anywhere in a file: at the top,
inside functions, under `if TYPE_CHECKING:`. It names the most specific module it reaches:
`from rlft import runtime` is rlft.runtime, `from rlft.data.jsonl import DataError` is
rlft.data.jsonl. Package __init__ files that run on the way are not counted. Lazy registry
entries ("rlft.x:NAME" strings) count for the layer rule but not for cycles: a registry lists
modules that import it, by design, and imports them only on first use.

The checker takes a package folder and a layer spec, so the last tests run it on a small planted
package to show that it catches a forbidden import and a cycle.
"""

from __future__ import annotations

import ast
import functools
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "rlft"
LAYERS_FILE = ROOT / "docs" / "layers.toml"
ARCHITECTURE_DOC = ROOT / "docs" / "architecture.md"


@dataclass(frozen=True)
class Import:
    importer: str
    line: int
    imported: str
    lazy: bool = False  # a registry's "module:NAME" string, not an import statement

    def where(self) -> str:
        what = "registers lazily" if self.lazy else "imports"
        return f"{self.importer} (line {self.line}) {what} {self.imported}"


# ---------------------------------------------------------------- the checker


def modules(package_dir: Path) -> dict[str, Path]:
    """Dotted name -> file of every module under package_dir; a package is named by its __init__.py."""
    found = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = path.relative_to(package_dir.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


@functools.cache
def imports(package_dir: Path) -> tuple[tuple[Import, ...], tuple[str, ...]]:
    """Every import of a module of the package by a module of it, and the problems met (imports of
    modules that do not exist). Parsed once per folder and test session."""
    mods = modules(package_dir)
    root = package_dir.name
    lazy_entry = re.compile(rf"^({re.escape(root)}(?:\.\w+)*):\w+$")
    found: list[Import] = []
    problems: list[str] = []

    def ours(name: str) -> bool:
        return name == root or name.startswith(root + ".")

    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names if ours(alias.name)]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    kept = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(kept + ([base] if base else []))
                if ours(base):
                    # `from a import b` reaches the module a.b when there is one, else a itself
                    targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in mods else base
                               for alias in node.names]
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                match = lazy_entry.match(node.value)
                if match:
                    if match.group(1) in mods:
                        found.append(Import(name, node.lineno, match.group(1), lazy=True))
                    else:
                        problems.append(f"{name} (line {node.lineno}) registers {node.value!r}: no such module")
                continue
            for target in dict.fromkeys(targets):
                if target not in mods:
                    problems.append(f"{name} (line {node.lineno}) imports {target}: no such module")
                elif target != name:
                    found.append(Import(name, node.lineno, target))
    return tuple(found), tuple(problems)


def matches(pattern: str, module: str) -> bool:
    if pattern.endswith(".*"):
        package = pattern[:-2]
        return module == package or module.startswith(package + ".")
    return module == pattern


def assign_layers(mods: dict[str, Path], spec: dict) -> tuple[dict[str, int], list[str]]:
    """Module -> index of its layer (bottom = 0), and the problems: a module in no layer or in
    several, a pattern that matches no module."""
    layers = spec["layer"]
    where: dict[str, int] = {}
    problems = []
    for module in mods:
        hits = [i for i, layer in enumerate(layers) if any(matches(p, module) for p in layer["modules"])]
        if len(hits) == 1:
            where[module] = hits[0]
        elif not hits:
            problems.append(f"{module} is in no layer: add it (or its package's pattern) to the `modules` of "
                            f"its layer in {spec.get('_file', 'the layer spec')} (docs/architecture.md says how)")
        else:
            problems.append(f"{module} is in more than one layer: {', '.join(layers[i]['name'] for i in hits)}")
    for layer in layers:
        for pattern in layer["modules"]:
            if not any(matches(pattern, module) for module in mods):
                problems.append(f"layer {layer['name']}: pattern {pattern!r} matches no module")
    return where, problems


def forbidden_imports(package_dir: Path, spec: dict) -> tuple[list[str], list[Import]]:
    """Imports that go up a layer and that no exception names (one message each), and the imports
    that go up a layer but are excused. Assignment problems come first."""
    mods = modules(package_dir)
    where, problems = assign_layers(mods, spec)
    found, unknown = imports(package_dir)
    problems += unknown
    names = [layer["name"] for layer in spec["layer"]]
    excused = {(e["importer"], e["imported"]) for e in spec.get("exception", [])}
    allowed_up: list[Import] = []
    for imp in found:
        if imp.importer not in where or imp.imported not in where:
            continue  # already reported as unassigned
        low, high = where[imp.importer], where[imp.imported]
        if high <= low:
            continue
        if (imp.importer, imp.imported) in excused:
            allowed_up.append(imp)
        else:
            problems.append(f"{imp.where()}: layer {names[low]} may not import layer {names[high]} "
                            f"(move the code, or list an [[exception]] with its reason)")
    return problems, allowed_up


def cycles(package_dir: Path) -> list[tuple[list[str], list[Import]]]:
    """Each group of modules that reach each other through imports (a strongly connected
    component), with one ring of imports through its first module."""
    found, _ = imports(package_dir)
    graph: dict[str, dict[str, Import]] = {name: {} for name in modules(package_dir)}
    for imp in found:
        if not imp.lazy:
            graph[imp.importer].setdefault(imp.imported, imp)
    # Tarjan's strongly connected components, without recursion
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(graph[start]))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, targets = work[-1]
            for target in targets:
                if target not in index:
                    index[target] = low[target] = len(index)
                    stack.append(target)
                    on_stack.add(target)
                    work.append((target, iter(graph[target])))
                    break
                if target in on_stack:
                    low[node] = min(low[node], index[target])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    group = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        group.append(member)
                        if member == node:
                            break
                    if len(group) > 1:
                        groups.append(sorted(group))
    return [(group, _ring(graph, set(group), group[0])) for group in groups]


def _ring(graph: dict[str, dict[str, Import]], group: set[str], start: str) -> list[Import]:
    """The shortest path of imports from start back to start inside group (breadth first)."""
    came_by: dict[str, Import] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for target, imp in graph[node].items():
                if target not in group or target in came_by:
                    continue
                came_by[target] = imp
                if target == start:
                    path = [imp]
                    while path[0].importer != start:
                        path.insert(0, came_by[path[0].importer])
                    return path
                following.append(target)
        frontier = following
    raise AssertionError(f"no ring through {start}")  # a strongly connected group always has one


def describe(ring: list[Import]) -> str:
    return " -> ".join(f"{imp.importer} (line {imp.line})" for imp in ring) + f" -> {ring[0].importer}"


def describe_group(group: list[str], ring: list[Import]) -> str:
    return f"{len(group)} modules import each other ({', '.join(group)}), e.g. {describe(ring)}"


def load_spec(path: Path) -> dict:
    spec = tomllib.loads(path.read_text())
    spec["_file"] = str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)
    return spec


# ---------------------------------------------------------------- rlft itself


def test_every_module_is_in_exactly_one_layer():
    _, problems = assign_layers(modules(PACKAGE), load_spec(LAYERS_FILE))
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)


def test_imports_go_down_the_layers():
    problems, _ = forbidden_imports(PACKAGE, load_spec(LAYERS_FILE))
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)


def test_every_exception_is_still_needed_and_has_a_reason():
    spec = load_spec(LAYERS_FILE)
    _, excused = forbidden_imports(PACKAGE, spec)
    used = {(imp.importer, imp.imported) for imp in excused}
    for exception in spec.get("exception", []):
        assert exception.get("reason", "").strip(), f"exception {exception} gives no reason"
        assert (exception["importer"], exception["imported"]) in used, (
            f"exception {exception['importer']} -> {exception['imported']} excuses no import that goes up a "
            f"layer: remove it from {LAYERS_FILE.relative_to(ROOT)}")


def test_no_import_cycle():
    found = cycles(PACKAGE)
    if found:
        pytest.fail("import cycles:\n" + "\n".join(describe_group(*cycle) for cycle in found), pytrace=False)


def test_the_architecture_document_names_every_layer():
    text = ARCHITECTURE_DOC.read_text()
    missing = [layer["name"] for layer in load_spec(LAYERS_FILE)["layer"] if f"`{layer['name']}`" not in text]
    assert not missing, f"docs/architecture.md does not describe the layers {missing} of docs/layers.toml"


# ---------------------------------------------------------------- the checker on a planted package

PLANTED_SPEC = """
[[layer]]
name = "low"
modules = ["pkg", "pkg.low", "pkg.util.*"]

[[layer]]
name = "high"
modules = ["pkg.high", "pkg.top"]

[[exception]]
importer = "pkg.util.helpers"
imported = "pkg.top"
reason = "planted: an excused upward import"
"""


def plant(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = tmp_path / "pkg" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path / "pkg"


def planted_spec(tmp_path: Path) -> dict:
    (tmp_path / "layers.toml").write_text(PLANTED_SPEC)
    return load_spec(tmp_path / "layers.toml")


def test_the_checker_passes_a_package_that_keeps_the_rules(tmp_path):
    package = plant(tmp_path, {
        "__init__.py": "",
        "low.py": "import os\n",
        "high.py": "from pkg import low\nfrom .top import main\n",
        "top.py": "from pkg.low import os\nREGISTRY = {'x': 'pkg.low:os'}\ndef main(): pass\n",
        "util/__init__.py": "",
        "util/helpers.py": "def f():\n    from pkg import top\n",
    })
    problems, excused = forbidden_imports(package, planted_spec(tmp_path))
    assert problems == []
    assert [(imp.importer, imp.imported) for imp in excused] == [("pkg.util.helpers", "pkg.top")]
    assert cycles(package) == []


def test_the_checker_catches_a_planted_forbidden_import_and_cycle(tmp_path):
    package = plant(tmp_path, {
        "__init__.py": "",
        "low.py": "import os\n\n\ndef late():\n    from . import high  # inside a function: still an import\n",
        "high.py": "import pkg.low\n",
        "top.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.util import helpers\n",
        "util/__init__.py": "",
        "util/helpers.py": "from pkg import top\n",
        "stray.py": "ENTRY = 'pkg.high:thing'\n",
    })
    problems, _ = forbidden_imports(package, planted_spec(tmp_path))
    assert problems == [
        "pkg.stray is in no layer: add it (or its package's pattern) to the `modules` of its layer in "
        f"{tmp_path / 'layers.toml'} (docs/architecture.md says how)",
        "pkg.low (line 5) imports pkg.high: layer low may not import layer high "
        "(move the code, or list an [[exception]] with its reason)",
    ]
    found = cycles(package)
    assert sorted(group for group, _ in found) == [["pkg.high", "pkg.low"], ["pkg.top", "pkg.util.helpers"]]
    rings = sorted(describe(ring) for _, ring in found)
    assert rings == [
        "pkg.high (line 1) -> pkg.low (line 5) -> pkg.high",
        "pkg.top (line 3) -> pkg.util.helpers (line 1) -> pkg.top",
    ]


def test_the_checker_counts_lazy_registry_entries_and_unknown_modules(tmp_path):
    package = plant(tmp_path, {
        "__init__.py": "",
        "low.py": "REGISTRY = {'a': 'pkg.high:thing', 'b': 'pkg.gone:thing'}\n",
        "high.py": "import pkg.low\nfrom pkg.missing import x\n",
        "top.py": "",
        "util/__init__.py": "",
        "util/helpers.py": "from pkg import top\n",
    })
    problems, _ = forbidden_imports(package, planted_spec(tmp_path))
    assert problems == [
        "pkg.high (line 2) imports pkg.missing: no such module",
        "pkg.low (line 1) registers 'pkg.gone:thing': no such module",
        "pkg.low (line 1) registers lazily pkg.high: layer low may not import layer high "
        "(move the code, or list an [[exception]] with its reason)",
    ]
    assert cycles(package) == []  # a registry's entries import it back by design
