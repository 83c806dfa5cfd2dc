"""Revertible patches: a host declares the replacements it makes in one list (``Patch``, grouped in a
``PatchSet``), applies them in its ``install()`` and reverts them exactly in its ``uninstall()``."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from typing import Any

__all__ = ['Patch', 'PatchConflict', 'PatchSet', 'is_patch', 'original_of']

_MARK = '__swift_fipo_patch__'
_MISSING = object()
# How far a chain of ``__wrapped__`` wrappers is followed to find a patch underneath.
_WRAPPER_DEPTH = 32


class PatchConflict(RuntimeError):
    """A patch cannot be reverted without also removing what someone else set on top of it."""


@dataclasses.dataclass(frozen=True, eq=False)
class _Mark:
    """What a patch's replacement carries: the replacement itself (identity: ``functools.wraps`` copies this mark
    onto a foreign wrapper, whose mark then names another function) and what it replaced."""

    replacement: Any
    original: Any


def _mark_of(value: Any) -> _Mark | None:
    """The mark of ``value`` if ``value`` is itself a replacement a ``Patch`` installed; None otherwise (a copied
    mark included)."""
    function = _unwrap_descriptor(value)
    mark = getattr(function, '__dict__', {}).get(_MARK)
    return mark if isinstance(mark, _Mark) and mark.replacement is function else None


def _patch_under(value: Any) -> Any:
    """The patch ``value`` wraps (following ``__wrapped__``, as ``functools.wraps`` sets it), when ``value`` is
    someone else's wrapper around one; None otherwise."""
    function = _unwrap_descriptor(value)
    for _ in range(_WRAPPER_DEPTH):
        function = getattr(function, '__wrapped__', None)
        if function is None:
            return None
        if _mark_of(function) is not None:
            return function
    return None


@dataclasses.dataclass(frozen=True)
class Patch:
    """Replace ``owner.attribute`` by ``make(original)``; revertible.

    The replacement remembers the original (and whether ``owner`` defined it itself or inherited it),
    so reverting restores exactly what was there and applying twice changes nothing. Only the replacement
    object itself counts as the patch: a wrapper someone else puts on top (even one that copied the
    replacement's attributes with ``functools.wraps``) is theirs, and is never replaced by a revert.
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
        # Already ours, here or on a base class the owner inherits it from, or under someone's wrapper:
        # wrapping twice would run the replacement twice.
        current = getattr(self.owner, self.attribute, None)
        if is_patch(current) or _patch_under(current) is not None:
            return
        own = self.own_value()
        replacement = self.make(getattr(self.owner, self.attribute))
        # Set after make: functools.wraps copies the wrapped function's __dict__ into the wrapper.
        function = _unwrap_descriptor(replacement)
        setattr(function, _MARK, _Mark(function, own))
        setattr(self.owner, self.attribute, replacement)

    def conflict(self) -> str | None:
        """Why reverting would remove someone else's wrapper set on top of this patch; None when it would not."""
        own = self.own_value()
        if own is _MISSING or is_patch(own) or _patch_under(own) is None:
            return None
        where = f'{getattr(self.owner, "__qualname__", self.owner)}.{self.attribute}'
        return (f"{where} is now {_defined_at(own)}, a wrapper someone set around swift-fipo's patch "
                f'({self.why or "FIPO"}); '
                f'reverting would remove that wrapper too, so swift-fipo leaves it. Put back what that wrapper '
                f'wraps first (or set {where} to what you want it to be).')

    def revert(self) -> None:
        conflict = self.conflict()
        if conflict is not None:
            raise PatchConflict(f'swift-fipo: cannot uninstall: {conflict}')
        if not self.is_applied():
            return
        mark = _mark_of(self.own_value())
        if mark is None:  # is_applied() found one: only a concurrent revert could have taken it
            return
        original = mark.original
        if original is _MISSING:
            delattr(self.owner, self.attribute)
        else:
            setattr(self.owner, self.attribute, original)


def _defined_at(value: Any) -> str:
    """Where a function was written: its code's name, file and line (``functools.wraps`` copies the wrapped
    function's ``__name__`` and ``__module__``, not its code)."""
    code = getattr(_unwrap_descriptor(value), '__code__', None)
    if code is None:
        return f'a {type(value).__name__} object'
    return f'{code.co_name} ({code.co_filename}:{code.co_firstlineno})'


def _unwrap_descriptor(value: Any) -> Any:
    return value.__func__ if isinstance(value, (staticmethod, classmethod)) else value


def is_patch(value: Any) -> bool:
    """True if ``value`` is a replacement a ``Patch`` installed (the object itself, not a copy of its marks)."""
    return _mark_of(value) is not None


def original_of(value: Any) -> Any:
    """What a patch replaced (``value`` itself if it is not a replacement)."""
    mark = _mark_of(value)
    if mark is None:
        return value
    # Where the owner only inherited the attribute, the wrapper's __wrapped__ is what it saw.
    return _unwrap_descriptor(value).__wrapped__ if mark.original is _MISSING else mark.original


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
        """Revert every patch, or none: a patch someone wrapped since is refused (``PatchConflict``) before
        any is reverted."""
        conflicts = [conflict for conflict in (patch.conflict() for patch in self.patches) if conflict is not None]
        if conflicts:
            raise PatchConflict('swift-fipo: cannot uninstall: ' + ' '.join(conflicts))
        for patch in reversed(self.patches):
            patch.revert()
