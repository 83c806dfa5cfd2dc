"""What ``swift-fipo doctor`` needs from every host, written once: the ``Diagnosis`` a host's
``diagnose()`` returns, importing a host module as a training run would (``import_observed``), and why a
module the activation should have patched is not (``why_not_hooked``).

No torch here: doctor imports a host's modules through this before the host's integration loads.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import io
from types import ModuleType

try:
    from swift_fipo import activation
    ACTIVATION_ERROR = ''
except ImportError as _error:  # a swift_fipo without activation.py ahead on sys.path: doctor says so
    activation = None  # type: ignore[assignment]
    ACTIVATION_ERROR = f'{type(_error).__name__}: {_error}'


@dataclasses.dataclass
class Diagnosis:
    """One host's part of doctor's report: indented lines, and for each way of running FIPO on the host
    (``'swift rlhf --loss_type fipo'``, ...) whether swift-fipo computes it here."""

    lines: list[str] = dataclasses.field(default_factory=list)
    verdicts: list[tuple[str, bool]] = dataclasses.field(default_factory=list)

    def say(self, line: str) -> None:
        self.lines.append(f'  {line}')

    def judge(self, what: str, served: bool) -> bool:
        self.verdicts.append((what, served))
        return served


def import_observed(name: str, diagnosis: Diagnosis | None = None) -> tuple[ModuleType | None, str]:
    """``(module or None, error)``: import ``name`` as a training run would. Whatever the import raises
    (``import swift`` itself may fail, some packages even exit) becomes one line; what it writes to stderr
    is kept back, except the activation's own reports, shortened to their first line and added to
    ``diagnosis``."""
    captured = io.StringIO()
    try:
        with contextlib.redirect_stderr(captured):
            module = importlib.import_module(name)
        error = ''
    except KeyboardInterrupt:
        raise
    except BaseException as exception:  # SystemExit included: a diagnosis must survive it
        module = None
        message = str(exception).strip().splitlines()
        error = f'{type(exception).__name__}: {message[0] if message else ""}'.rstrip(': ')
    if diagnosis is not None:
        for line in captured.getvalue().splitlines():
            if line.startswith('[swift-fipo] '):
                diagnosis.say(line.removeprefix('[swift-fipo] '))
    return module, error


def activation_running() -> bool:
    """Whether the interpreter-start activation watches imports in this interpreter."""
    return activation is not None and not activation.is_disabled() and activation.watcher_installed()


def why_not_hooked() -> str:
    """Why a host module the activation watches is not patched."""
    if activation is None:
        return 'swift_fipo.activation is missing (see above)'
    if activation.is_disabled():
        return f'{activation.DISABLE_ENV} is set'
    if not activation.watcher_installed():
        return 'the activation is not running in this interpreter'
    return 'the activation could not patch it (see the note above)'
