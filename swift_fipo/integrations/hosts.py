"""The table of hosts: every training framework swift-fipo serves, read by the interpreter-start activation
(which modules to watch), ``swift_fipo.install()`` / ``uninstall()`` and ``swift-fipo doctor``.

Each host is a subpackage of ``swift_fipo.integrations`` whose ``layout`` module is its torch-free record
(``NAME``, ``DISTRIBUTION``, ``WATCHED``: host module -> ``'plugin module:patcher'``, and where things are in
the host) and whose package exposes the host interface:

- ``install() -> dict``: patch what the host has importable now (the explicit route); a report;
- ``uninstall() -> None``: revert every patch exactly;
- ``diagnose() -> swift_fipo.integrations.diagnosis.Diagnosis``: doctor's lines and verdicts.

Read at every interpreter start, so this imports only the layout records (no typing, no torch, no host).
"""

from __future__ import annotations

import importlib

TYPE_CHECKING = False
if TYPE_CHECKING:
    from types import ModuleType
    from typing import Any

    from swift_fipo.integrations.diagnosis import Diagnosis

# One line per host: adding a host is a subpackage and its name here.
HOST_PACKAGES = ('ms_swift', 'verl', 'trl', 'openrlhf')


class Host:
    """One host: its layout record, and its integration package loaded when first used."""

    __slots__ = ('layout',)

    def __init__(self, layout: ModuleType) -> None:
        self.layout = layout

    @property
    def name(self) -> str:
        name: str = self.layout.NAME
        return name

    @property
    def distribution(self) -> str:
        distribution: str = self.layout.DISTRIBUTION
        return distribution

    @property
    def watched(self) -> dict[str, str]:
        watched: dict[str, str] = self.layout.WATCHED
        return watched

    @property
    def package(self) -> str:
        return self.layout.__name__.rpartition('.')[0]

    def integration(self) -> Any:
        """The host's package (its install / uninstall / diagnose load with it, importing torch and the host)."""
        return importlib.import_module(self.package)

    def is_installed(self) -> bool:
        from swift_fipo.integrations.versions import installed_version
        return installed_version(self.distribution) is not None

    def install(self) -> dict[str, Any]:
        report: dict[str, Any] = self.integration().install()
        return report

    def uninstall(self) -> None:
        self.integration().uninstall()

    def diagnose(self) -> Diagnosis:
        diagnosis: Diagnosis = self.integration().diagnose()
        return diagnosis

    def __repr__(self) -> str:
        return f'Host({self.name!r})'


HOSTS = tuple(Host(importlib.import_module(f'{__name__.rpartition(".")[0]}.{package}.layout'))
              for package in HOST_PACKAGES)


def host(name: str) -> Host:
    """The host called ``name`` (``'ms-swift'``, ``'verl'``, ...)."""
    for candidate in HOSTS:
        if candidate.name == name:
            return candidate
    raise KeyError(f'no host {name!r}; hosts: {", ".join(candidate.name for candidate in HOSTS)}')


def watched_modules() -> dict[str, str]:
    """``{module: 'plugin module:patcher'}`` over every host."""
    return {module: patcher for host in HOSTS for module, patcher in host.watched.items()}


def install(*names: str) -> dict[str, dict[str, Any]]:
    """Hook swift-fipo into the named hosts (default: every installed one) in this process, the explicit
    route where the interpreter-start activation does not run; ``{host: its install() report}``. A host
    that is installed but cannot be hooked raises, naming it."""
    chosen = [host(name) for name in names] if names else [each for each in HOSTS if each.is_installed()]
    return {each.name: each.install() for each in chosen}


def uninstall(*names: str) -> None:
    """Revert every patch swift-fipo made to the named hosts (default: all) in this process, exactly."""
    for each in [host(name) for name in names] if names else HOSTS:
        if each.is_installed():
            each.uninstall()
