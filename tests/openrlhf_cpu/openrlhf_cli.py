"""Run OpenRLHF's real command line (``openrlhf.cli.train_ppo_ray`` as ``__main__``: its inline parser, its own
checks after parsing) up to the point where it would start Ray and build its DeepSpeed strategy, and hand
back the arguments it built. Test-only.

Faked, because it cannot run here or is not what is tested: ``ray.is_initialized`` answers True (no Ray
cluster is started) and ``openrlhf.utils.get_strategy`` stops the program with the arguments it was given.

    python openrlhf_cli.py ROUTE -- ARGV...          one real run: exit status and stderr as the user sees them
    python openrlhf_cli.py ROUTE --cases IN --out OUT   every argv in IN (a JSON list): OUT gets a JSON list of
                                                        {status, stderr, warnings, values}

ROUTE: ``install`` (``swift_fipo.integrations.openrlhf.install()``, the explicit route) or ``activation`` (the
interpreter-start watcher, with the OpenRLHF modules added to what it watches if the table of hosts lacks them).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import runpy
import sys
import warnings
from typing import Any

from swift_fipo.integrations.openrlhf import layout


class Stopped(Exception):
    """Raised by the stand-in get_strategy: the command line got as far as building its strategy."""

    def __init__(self, arguments: Any) -> None:
        super().__init__('stopped before the strategy')
        self.arguments = arguments


def set_route(route: str) -> None:
    if route == 'install':
        from swift_fipo.integrations import openrlhf
        openrlhf.install()
    elif route == 'activation':
        from swift_fipo import activation
        assert activation.watcher_installed(), 'the .pth activation is not running in this interpreter'
        for name, patcher in layout.WATCHED.items():
            activation.WATCHED_MODULES.setdefault(name, patcher)
    else:
        raise SystemExit(f'unknown route {route!r}')


def _stop(arguments: Any) -> Any:
    raise Stopped(arguments)


def run(argv: list[str]) -> Any:
    """The arguments OpenRLHF's command line builds from ``argv`` (SystemExit where it refuses them)."""
    import openrlhf.utils
    import ray
    ray.is_initialized = lambda: True
    openrlhf.utils.get_strategy = _stop
    sys.argv = [layout.CLI_MODULE, *argv]
    try:
        runpy.run_module(layout.CLI_MODULE, run_name='__main__', alter_sys=True)
    except Stopped as stopped:
        return stopped.arguments
    raise AssertionError('the command line ran past get_strategy')


def values(arguments: Any) -> dict[str, Any]:
    from swift_fipo.integrations.settings import settings_of
    settings = settings_of(arguments)
    fipo = getattr(arguments.actor, 'fipo', None)
    return {
        'policy_loss_type': arguments.actor.policy_loss_type,
        'dual_clip': arguments.actor.dual_clip,
        'eps_clip_low_high': list(arguments.actor.eps_clip_low_high),
        'fipo': vars(fipo) if fipo is not None else None,
        'settings': dataclasses.asdict(settings.config) if settings is not None else None,
    }


def run_case(argv: list[str]) -> dict[str, Any]:
    stderr = io.StringIO()
    status, found = 0, None
    with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stderr(stderr):
        warnings.simplefilter('always')
        try:
            found = values(run(argv))
        except SystemExit as exit_:
            status = exit_.code
    return {'status': status, 'stderr': stderr.getvalue(), 'values': found,
            'warnings': [str(warning.message) for warning in caught if 'swift-fipo' in str(warning.message)]}


def main() -> None:
    route, *rest = sys.argv[1:]
    set_route(route)
    if rest[:1] == ['--']:
        print(json.dumps(values(run(rest[1:]))))
        return
    cases = json.loads(open(rest[rest.index('--cases') + 1]).read())
    results = [run_case(argv) for argv in cases]
    with open(rest[rest.index('--out') + 1], 'w') as out:
        json.dump(results, out)


if __name__ == '__main__':
    main()
