"""Lazy package attributes (PEP 562): a package names what it exports and where each name lives, and the module
defining a name is imported on its first use, so ``import jaxtl`` costs milliseconds and a data worker process that
unpickles ``jaxtl.data.decoding`` imports neither jax nor flax nor optax.

``from jaxtl import finetune``, ``jaxtl.finetune``, ``jaxtl.data`` and ``dir(jaxtl)`` behave as with eager imports;
a name is imported once and then kept as a plain attribute of the package. Any submodule is reachable as an attribute
too (``jaxtl.lifecycle``), as it was when the package imported everything. An export named like a submodule
(``jaxtl.train.fit``, the function, in ``jaxtl/train/fit.py``) stays the export: Python binds a submodule to its
package's attribute when it is imported, which the package declines for those names.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import types
from collections.abc import Callable, Iterable, Mapping
from typing import Any

__all__ = ["exports"]

_SHADOWED: dict[str, frozenset[str]] = {}  # per package: exports that share their name with a submodule


class _Package(types.ModuleType):
    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(value, types.ModuleType) and name in _SHADOWED.get(self.__name__, ()):
            return  # the submodule stays in sys.modules; the package keeps the export of that name
        super().__setattr__(name, value)


def _submodules(package: str) -> set[str]:
    out: set[str] = set()
    for folder in getattr(sys.modules[package], "__path__", ()):
        for entry in os.listdir(folder):
            out.add(entry.removesuffix(".py") if entry.endswith(".py") else entry)
    return out


def exports(package: str, where: Mapping[str, Iterable[str]]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package`` exporting, per module path of ``where``, the names listed there
    (``from module import name``; names listed under ``package`` itself are its submodules, ``from package import
    data``)."""
    home = {name: module for module, names in where.items() for name in names}
    _SHADOWED[package] = frozenset(n for n in _submodules(package) & set(home) if home[n] != package)
    if _SHADOWED[package]:
        sys.modules[package].__class__ = _Package

    def __getattr__(name: str) -> Any:
        module = home.get(name)
        if module is None:
            if name.startswith("__") or importlib.util.find_spec(f"{package}.{name}") is None:
                raise AttributeError(f"module {package!r} has no attribute {name!r}")
            return importlib.import_module(f"{package}.{name}")
        if module == package:
            value = importlib.import_module(f"{package}.{name}")
        else:
            value = getattr(importlib.import_module(module), name)
        setattr(sys.modules[package], name, value)  # from now on a plain attribute: no second lookup
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(home))

    return __getattr__, __dir__
