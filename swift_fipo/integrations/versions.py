"""Which version of a host (or any distribution) is installed, read from its metadata without importing it."""

from __future__ import annotations

import importlib.metadata

__all__ = ['installed_version']


def installed_version(distribution: str) -> str | None:
    """The installed version of a distribution (e.g. ``ms-swift``), or None."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None
