"""Interpreter-start activation, run from the ``swift_fipo.pth`` file that ``pip install`` places in
site-packages.

It only registers an import watcher: nothing heavy is imported, nothing is written, no network is
touched. When (and only when) ms-swift itself imports one of its GRPO trainer modules, the watcher
lets the module load and then patches it (``swift_fipo.integrations.ms_swift``). Because the .pth
runs in every interpreter, this reaches every process ms-swift starts, torchrun workers included.

Set ``SWIFT_FIPO_DISABLE=1`` to turn it off. The variable is read at interpreter start (set then, no watcher
is registered at all) and again each time a watched host module loads (set later in the process, e.g. in a
notebook before ``import swift``, that module loads unpatched). A module patched before the variable was set
stays patched (``swift_fipo.uninstall()`` reverts it). A failure here is reported on stderr, never raised.
"""

from __future__ import annotations

import os
import sys

from swift_fipo.integrations.hosts import watched_modules

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing and importlib.abc cost milliseconds at every interpreter start
    from collections.abc import Sequence
    from importlib.abc import Loader
    from importlib.machinery import ModuleSpec
    from types import ModuleType
    from typing import Any

DISABLE_ENV = 'SWIFT_FIPO_DISABLE'
# Host module -> 'plugin module:function' that patches it right after it is first imported, for every
# host in the table (integrations/hosts.py: strings only, so this costs no import of a host or of torch).
WATCHED_MODULES = watched_modules()


def is_disabled() -> bool:
    return os.environ.get(DISABLE_ENV, '').strip().lower() in ('1', 'true', 'yes', 'on')


def _report(message: str) -> None:
    sys.stderr.write(f'[swift-fipo] {message}\n')


def _patch(module: ModuleType) -> bool:
    """Run the module's patcher; True if it succeeded. A failure is reported, never raised."""
    try:
        import importlib
        patcher_module, _, patcher = WATCHED_MODULES[module.__name__].partition(':')
        getattr(importlib.import_module(patcher_module), patcher)(module)
        return True
    except Exception as error:  # never break the host's own import; the parse-time checks report fipo runs
        # One line, not a traceback: this lands in the output of every program that imports the host.
        _report(f'could not hook {module.__name__} ({type(error).__name__}: {error}); FIPO falls back to the '
                "host's own code. Run `swift-fipo doctor` for details.")
        return False


class _PatchingLoader:
    """Delegates to the real loader, then patches the freshly executed module."""

    def __init__(self, loader: Loader) -> None:
        self._loader = loader

    def create_module(self, spec: ModuleSpec) -> ModuleType | None:
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self._loader.exec_module(module)
        _patch(module)

    def __getattr__(self, name: str) -> Any:  # get_source, get_filename, is_package, ...
        return getattr(self._loader, name)


class TrainerImportWatcher:
    """Meta-path finder that only reacts to the host modules in ``WATCHED_MODULES``."""

    def find_spec(self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
                  ) -> ModuleSpec | None:
        # Read when the host module loads, not only at start: a program may set the variable before importing its
        # host. One environment lookup, only for the few watched names.
        if fullname not in WATCHED_MODULES or is_disabled():
            return None
        for finder in sys.meta_path:
            if finder is self or isinstance(finder, TrainerImportWatcher):
                continue
            find_spec = getattr(finder, 'find_spec', None)
            spec = find_spec(fullname, path, target) if find_spec else None
            if spec is not None:
                break
        else:
            return None
        if spec.loader is not None and hasattr(spec.loader, 'exec_module'):
            spec.loader = _PatchingLoader(spec.loader)
        return spec


def watcher_installed() -> bool:
    return any(isinstance(finder, TrainerImportWatcher) for finder in sys.meta_path)


def activate() -> None:
    """Register the watcher once; patch trainer modules that are already imported."""
    try:
        if is_disabled() or watcher_installed():
            return
        sys.meta_path.insert(0, TrainerImportWatcher())
        for name in WATCHED_MODULES:
            if name in sys.modules:
                _patch(sys.modules[name])
    except Exception as error:
        _report(f'activation failed ({type(error).__name__}: {error}); swift-fipo is inactive in this process.')
