"""Lazily loaded public names, for packages imported at interpreter start (no torch until a name is used)."""

from __future__ import annotations

import importlib

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs milliseconds at every interpreter start
    from collections.abc import Callable
    from typing import Any


def lazy_exports(namespace: dict, modules: dict) -> Callable[[str], Any]:
    """A module ``__getattr__`` for the names ``modules`` lists (``{module path: names}``): a name's module is
    imported on its first use, and the value kept in ``namespace`` (the package's ``globals()``), so the next
    access is a plain lookup."""
    exports = {name: module for module, names in modules.items() for name in names}

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f'module {namespace["__name__"]!r} has no attribute {name!r}')
        value = getattr(importlib.import_module(module), name)
        namespace[name] = value
        return value

    __getattr__.exports = exports  # type: ignore[attr-defined]  # read by the tests and doctor, never imported
    return __getattr__
