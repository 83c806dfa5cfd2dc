"""Capabilities read from a host's source text: where a host offers no version-independent way to ask
whether its code still does what FIPO relies on (the loss reads the advantages after the log-probs, the
surrogate is linear in them, ...), the integration reads the code itself. Each host's markers (the exact
snippets) live in its ``layout``; these helpers are how every host reads them.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable
from typing import Any

__all__ = ['method_text', 'missing_markers', 'reads_in_order', 'source_of']


def source_of(function: Any) -> str | None:
    """The source text of ``function`` (a function, method or class), or None where there is none to read
    (a frozen install, a builtin, code made at run time)."""
    try:
        return inspect.getsource(function)
    except (OSError, TypeError):
        return None


def method_text(module_source: str, name: str) -> str:
    """The text of method ``name`` in a module's source read from disk ('' if it has none): from its ``def``
    to the next method of the same class (four-space indentation) or the end."""
    start = module_source.find(f'def {name}(')
    if start < 0:
        return ''
    end = module_source.find('\n    def ', start + 1)
    return module_source[start:end if end > 0 else len(module_source)]


def missing_markers(source: str, markers: Iterable[str]) -> list[str]:
    """The markers ``source`` does not contain, in the order given (empty: it has them all)."""
    return [marker for marker in markers if marker not in source]


def reads_in_order(source: str, first: str, then: str) -> bool:
    """True if ``source`` contains ``first`` and the first ``then`` comes after the first ``first`` (e.g. a
    loss that reads the advantages only once it has computed the current log-probs)."""
    first_at = source.find(first)
    return 0 <= first_at < source.find(then)
