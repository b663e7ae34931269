"""The code's shape, checked: layers point one way, no import cycles, no private names across modules, small
public functions and modules (see shared/ARCHITECTURE.md). Read from the source with ``ast``; nothing is imported.

- Nothing below the package root imports ``jaxtl`` itself (``import jaxtl`` / ``from jaxtl import ...``).
- ``jaxtl.data`` imports nothing from ``jaxtl.models``, ``jaxtl.train``, ``jaxtl.recipes`` or the bridge;
  ``jaxtl.models`` nothing from ``jaxtl.data``, ``jaxtl.train``, ``jaxtl.recipes`` or the bridge.
- No import cycles between modules (imports inside functions count: a lazy import is still a dependency).
- No private name (``_x``) is imported from another module.
- No public function, method or class (its ``__init__``, dataclass fields included) in jaxtl/ or bridge/ takes more
  than 12 parameters, the command line aside; no module there is longer than 450 lines.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MAX_PARAMS = 12
MAX_LINES = 450
CLI = {"jaxtl.cli", "jaxtl.cli_options", "jaxtl.cli_tools"}
FORBIDDEN = {
    "jaxtl.data": ("jaxtl.models", "jaxtl.train", "jaxtl.recipes", "jaxtl.bridge"),
    "jaxtl.models": ("jaxtl.data", "jaxtl.train", "jaxtl.recipes", "jaxtl.bridge"),
}


def _modules() -> dict[str, Path]:
    out = {}
    for base, package in ((ROOT / "jaxtl", "jaxtl"), (ROOT / "bridge", "jaxtl.bridge")):
        for path in sorted(base.rglob("*.py")):
            parts = list(path.relative_to(base).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join([package, *parts])] = path
    return out


MODULES = _modules()
TREES = {name: ast.parse(path.read_text(), str(path)) for name, path in MODULES.items()}


def _is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def _resolve(module: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".") if _is_package(module) else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, *([node.module] if node.module else [])])


def _imports(module: str) -> list[tuple[str, str | None, int]]:
    """``(imported module, name or None, line)`` for every import in ``module``, at any depth."""
    out: list[tuple[str, str | None, int]] = []
    for node in ast.walk(TREES[module]):
        if isinstance(node, ast.Import):
            out += [(a.name, None, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(module, node)
            for a in node.names:
                sub = f"{target}.{a.name}"
                out.append((sub, None, node.lineno) if sub in MODULES else (target, a.name, node.lineno))
    return out


def _own(target: str) -> str | None:
    """The jaxtl module ``target`` names (its nearest existing parent), or None outside jaxtl."""
    while target and target not in MODULES:
        target = target.rpartition(".")[0]
    return target or None


def test_nothing_below_the_root_imports_the_package_itself():
    bad = [
        f"{m}:{line} imports jaxtl{'.' + name if name else ''}"
        for m in MODULES
        if m not in ("jaxtl", "jaxtl.bridge") and m not in CLI
        for target, name, line in _imports(m)
        if target == "jaxtl"
    ]
    assert not bad, "\n".join(bad)


def test_layers_point_one_way():
    bad = []
    for m in MODULES:
        for layer, forbidden in FORBIDDEN.items():
            if m == layer or m.startswith(layer + "."):
                for target, _, line in _imports(m):
                    if any(target == f or target.startswith(f + ".") for f in forbidden):
                        bad.append(f"{m}:{line} imports {target}")
    assert not bad, "\n".join(bad)


def test_no_import_cycles():
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for m in MODULES:
        for target, _, _ in _imports(m):
            own = _own(target)
            # A package's __init__ re-exports its submodules: an edge into a package counts, one out of its own
            # __init__ to its submodules does not close a cycle through a sibling's `from package import x`.
            if own is not None and own != m and not (_is_package(m) and own.startswith(m + ".")):
                graph[m].add(own)
    cycles, state = [], {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join([*path[path.index(nxt) :], nxt]))
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not cycles, "\n".join(cycles)


def test_no_private_names_across_modules():
    bad = [
        f"{m}:{line} imports {name} from {target}"
        for m in MODULES
        for target, name, line in _imports(m)
        if name and name.startswith("_") and not name.startswith("__") and _own(target) is not None
    ]
    assert not bad, "\n".join(bad)


def _params(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    a = fn.args
    names = [*a.posonlyargs, *a.args, *a.kwonlyargs]
    n = len(names) - (1 if names and names[0].arg in ("self", "cls") else 0)
    return n + (a.vararg is not None) + (a.kwarg is not None)


def _dataclass_fields(cls: ast.ClassDef) -> int:
    # Frozen dataclasses are what users build (configs); plain result records (reports) are built by jaxtl.
    frozen = any("dataclass" in ast.unparse(d) and "frozen=True" in ast.unparse(d) for d in cls.decorator_list)
    if not frozen:
        return 0
    return sum(
        1
        for s in cls.body
        if isinstance(s, ast.AnnAssign)
        and "ClassVar" not in ast.unparse(s.annotation)
        and "field(pytree_node=False" not in ast.unparse(s)
    )


def test_public_functions_take_at_most_12_parameters():
    bad = []
    for m, tree in TREES.items():
        if m in CLI:
            continue
        for node in tree.body:
            function = isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and not node.name.startswith("_")
            if function and _params(node) > MAX_PARAMS:  # type: ignore[arg-type]
                bad.append(f"{m}.{node.name}: {_params(node)} parameters")  # type: ignore[arg-type, union-attr]
            if isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
                fields = _dataclass_fields(node)
                if fields > MAX_PARAMS:
                    bad.append(f"{m}.{node.name}: {fields} fields")
                for fn in node.body:
                    public = (
                        not fn.name.startswith("_") or fn.name == "__init__"
                        if isinstance(fn, ast.FunctionDef)
                        else False
                    )
                    if public and _params(fn) > MAX_PARAMS:  # type: ignore[arg-type]
                        bad.append(f"{m}.{node.name}.{fn.name}: {_params(fn)} parameters")  # type: ignore[union-attr]
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_modules_are_at_most_450_lines(module):
    lines = len(MODULES[module].read_text().splitlines())
    assert lines <= MAX_LINES, f"{MODULES[module].relative_to(ROOT)} has {lines} lines"
