"""Lazily loaded public names, for packages imported at interpreter start (no torch until a name is used)."""

from __future__ import annotations

import importlib

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs milliseconds at every interpreter start
    from typing import Any, Callable


def lazy_exports(namespace: dict, exports: dict) -> Callable[[str], Any]:
    """A module ``__getattr__`` that imports ``exports[name]`` (a module path) on first use of ``name`` and
    keeps the value in ``namespace`` (the package's ``globals()``), so the next access is a plain lookup."""

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f'module {namespace["__name__"]!r} has no attribute {name!r}')
        value = getattr(importlib.import_module(module), name)
        namespace[name] = value
        return value

    __getattr__.exports = exports  # type: ignore[attr-defined]  # read by the tests and doctor, never imported
    return __getattr__
