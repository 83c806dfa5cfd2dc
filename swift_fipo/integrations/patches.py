"""Revertible patches: a host declares the replacements it makes in one list (``Patch``, grouped in a
``PatchSet``), applies them in its ``install()`` and reverts them exactly in its ``uninstall()``."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterable

__all__ = ['Patch', 'PatchSet', 'is_patch', 'original_of']

_ORIGINAL = '__swift_fipo_original__'
_MISSING = object()


@dataclasses.dataclass(frozen=True)
class Patch:
    """Replace ``owner.attribute`` by ``make(original)``; revertible.

    The replacement remembers the original (and whether ``owner`` defined it itself or inherited it),
    so reverting restores exactly what was there and applying twice changes nothing.
    """

    owner: Any
    attribute: str
    make: Callable[[Any], Any]
    why: str = ''

    def own_value(self) -> Any:
        return vars(self.owner).get(self.attribute, _MISSING) if hasattr(self.owner, '__dict__') else _MISSING

    def is_applied(self) -> bool:
        """True if ``owner`` itself holds a replacement made by a patch."""
        return is_patch(self.own_value())

    def apply(self) -> None:
        # Already ours, here or on a base class the owner inherits it from: wrapping twice would
        # run the wrapper twice.
        if is_patch(getattr(self.owner, self.attribute, None)):
            return
        own = self.own_value()
        replacement = self.make(getattr(self.owner, self.attribute))
        # Set after make: functools.wraps copies the wrapped function's __dict__ into the wrapper.
        setattr(_unwrap_descriptor(replacement), _ORIGINAL, own)
        setattr(self.owner, self.attribute, replacement)

    def revert(self) -> None:
        if not self.is_applied():
            return
        original = getattr(_unwrap_descriptor(self.own_value()), _ORIGINAL)
        if original is _MISSING:
            delattr(self.owner, self.attribute)
        else:
            setattr(self.owner, self.attribute, original)


def _unwrap_descriptor(value: Any) -> Any:
    return value.__func__ if isinstance(value, (staticmethod, classmethod)) else value


def is_patch(value: Any) -> bool:
    """True if ``value`` is a replacement a ``Patch`` installed."""
    return _ORIGINAL in getattr(_unwrap_descriptor(value), '__dict__', {})


def original_of(value: Any) -> Any:
    """What a patch replaced (``value`` itself if it is not a replacement)."""
    if not is_patch(value):
        return value
    function = _unwrap_descriptor(value)
    original = getattr(function, _ORIGINAL)
    # Where the owner only inherited the attribute, the wrapper's __wrapped__ is what it saw.
    return function.__wrapped__ if original is _MISSING else original


@dataclasses.dataclass(frozen=True)
class PatchSet:
    """The patches one host needs, applied together and reverted together (in reverse order)."""

    patches: tuple[Patch, ...]

    def __init__(self, patches: Iterable[Patch]) -> None:
        object.__setattr__(self, 'patches', tuple(patches))

    def apply(self) -> None:
        for patch in self.patches:
            patch.apply()

    def revert(self) -> None:
        for patch in reversed(self.patches):
            patch.revert()
