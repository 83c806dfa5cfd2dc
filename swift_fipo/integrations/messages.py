"""What swift-fipo tells the user while a host runs, on rank 0 only: ``warn`` (a Python warning about a
setting, once per message) and ``report`` (a line on stderr about something during training)."""

from __future__ import annotations

import sys
import warnings

from swift_fipo.integrations.ranks import on_rank_zero

__all__ = ['FIPOWarning', 'report', 'warn']


class FIPOWarning(UserWarning):
    """A FIPO setting that works but probably not as the user meant (e.g. FIPO would be a no-op)."""


def report(message: str) -> None:
    """Write one ``[swift-fipo] WARNING:`` line to stderr on rank 0 only, for what happens during training
    (a Python warning would name a line of ours, and hosts often silence warnings while they train)."""
    if on_rank_zero():
        print(f'[swift-fipo] WARNING: {message}', file=sys.stderr, flush=True)


def warn(message: str, stacklevel: int = 2) -> None:
    """Warn on rank 0 only, once per message and call site (Python's ``default`` warning action)."""
    if not on_rank_zero():
        return
    # Hosts (and their dependencies) sometimes silence warnings wholesale; ours must still show. Added
    # only when missing: every change of the filters resets Python's record of what was shown.
    if not any(entry[2] is FIPOWarning for entry in warnings.filters):
        warnings.filterwarnings('default', category=FIPOWarning)
    warnings.warn(f'[swift-fipo] WARNING: {message}', FIPOWarning, stacklevel=stacklevel + 1)
