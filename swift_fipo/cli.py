"""``swift-fipo`` command line: ``doctor`` (is FIPO hooked here, and if not, why), ``plugin-path``, and the
viewers ``plot`` (metric charts) and ``inspect`` (per-token HTML page)."""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

import swift_fipo
from swift_fipo import __version__
from swift_fipo.integrations.diagnosis import ACTIVATION_ERROR, activation
from swift_fipo.integrations.hosts import HOSTS
from swift_fipo.integrations.versions import installed_version

_PTH_NAME = 'swift_fipo.pth'
_DISTRIBUTION = 'swift-fipo'


def _distribution() -> importlib.metadata.Distribution | None:
    try:
        return importlib.metadata.distribution(_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return None


def _site_directories() -> list[Path]:
    """The directories whose .pth files this interpreter runs at start-up (none under ``python -S``)."""
    import site
    return [Path(entry) for entry in (*site.getsitepackages(), site.getusersitepackages())]


def _pth_file() -> Path | None:
    """The installed activation file: from the distribution's file list (found on sys.path even where
    the interpreter processed no site-packages, ``python -S``), else looked for in the site directories."""
    distribution = _distribution()
    for file in (distribution.files or []) if distribution is not None else []:
        if file.name == _PTH_NAME and Path(str(file.locate())).is_file():
            return Path(str(file.locate()))
    for directory in _site_directories():
        if (directory / _PTH_NAME).is_file():
            return directory / _PTH_NAME
    return None


def _editable() -> bool:
    """Whether pip installed swift-fipo editable (``pip install -e``: no swift_fipo.pth is installed)."""
    distribution = _distribution()
    try:
        text = distribution.read_text('direct_url.json') if distribution is not None else None
        return bool(text) and bool(json.loads(text).get('dir_info', {}).get('editable'))
    except (ValueError, AttributeError, OSError):  # unreadable metadata: no claim either way
        return False


def _pth_state(pth: Path | None) -> str:
    """The `.pth file` line: where it is, or why there is none."""
    if pth is not None:
        return str(pth)
    if _editable():
        return 'missing: swift-fipo is installed editable (pip install -e), which does not install it'
    if sys.flags.no_site:  # not searched for at all, so not known to be missing
        return 'not found (python -S: no site-packages directory was processed)'
    return 'missing (installed editable or not via pip?)'


def _why_inactive(pth: Path | None) -> str:
    """Why the watcher is not in this interpreter although nothing disabled it."""
    if sys.flags.no_site:
        return 'python -S: no site-packages directory was processed, so no .pth file ran'
    if pth is not None and pth.parent.resolve() not in {directory.resolve() for directory in _site_directories()}:
        return f'{pth.parent} is not a site-packages directory of this interpreter: .pth files run only there'
    return 'the .pth file did not run'


def _shadowing() -> str | None:
    """A note when the swift_fipo imported here is not the installed one (another is ahead on sys.path)."""
    imported = Path(swift_fipo.__file__ or '').resolve().parent
    distribution = _distribution()
    installed = Path(str(distribution.locate_file('swift_fipo/__init__.py'))) if distribution is not None else None
    if installed is None or not installed.is_file() or installed.resolve().parent == imported:
        return None
    return f'{imported}, not the installed {installed.parent}: another swift_fipo is ahead on sys.path'


def doctor() -> int:
    """Print the environment and, for every installed host in the table, whether FIPO there is served by
    swift-fipo here.

    The state is observed, never made: each host's modules are imported through the normal import system
    (``Host.diagnose``), so the activation hook (if this interpreter has it) patches them exactly as in a
    training run, and then they are inspected. Exit 0 if every verdict is "computed by swift-fipo", else 1.
    """
    lines = [f'swift-fipo {__version__} (python {sys.version.split()[0]})']
    host_distributions = [host.distribution for host in HOSTS]
    for distribution in ('torch', *host_distributions, 'transformers', 'megatron-core', 'deepspeed', 'vllm'):
        lines.append(f'  {distribution:<13} {installed_version(distribution) or "not installed"}')
    pth = _pth_file()
    lines.append('activation:')
    shadowing = _shadowing()
    if shadowing is not None:
        lines.append(f'  package       {shadowing}')
    lines.append(f'  .pth file     {_pth_state(pth)}')
    if activation is None:
        package = Path(swift_fipo.__file__ or '').parent
        lacks = (f'{package} has no activation.py' if not (package / 'activation.py').exists()
                 else f'{package / "activation.py"} does not import ({ACTIVATION_ERROR})')
        lines.append(f'  state         unavailable: {lacks}; an incomplete or foreign swift_fipo is ahead on sys.path: '
                     'remove it, or reinstall swift-fipo')
    elif activation.is_disabled():
        disabled = f'  state         disabled by {activation.DISABLE_ENV}={os.environ[activation.DISABLE_ENV]}'
        if activation.watcher_installed():  # set after this interpreter started, by the program itself
            lines.append(f'{disabled}, set after this interpreter started: host modules imported from now on are '
                         'not hooked; those imported before stay hooked (swift_fipo.uninstall() reverts them)')
        else:
            lines.append(f'{disabled}: the hosts run their own code')
    elif activation.watcher_installed():
        watching = ' or '.join(host.name for host in HOSTS if host.watched)
        lines.append(f'  state         active: host modules are hooked when {watching} imports them')
    else:
        lines.append(f'  state         inactive in this interpreter ({_why_inactive(pth)}; explicit routes: '
                     '--external_plugins "$(swift-fipo plugin-path)" or swift_fipo.install())')
    lines.append('hooks (host modules imported as a training run imports them):')
    verdicts = []
    installed = [host for host in HOSTS if host.is_installed()]
    for host in installed:
        diagnosis = host.diagnose()
        lines.extend(diagnosis.lines)
        verdicts.extend(diagnosis.verdicts)
    if not installed:  # advice only where there is nothing to diagnose
        lines.append(f'  no host is installed: swift-fipo serves {", ".join(host.name for host in HOSTS)}; install the '
                     'one you train with (see docs/)')
    for what, served in verdicts:
        lines.append(f'verdict: {what} is ' + ('computed by swift-fipo' if served else
                                                'NOT computed by swift-fipo here (see above)'))
    for line in lines:
        _say(line)
    # Every installed host gives a verdict: 0 when each is served.
    return 0 if verdicts and all(served for _, served in verdicts) else 1


def plugin_path() -> int:
    """Print the file to pass to ms-swift's --external_plugins."""
    spec = importlib.util.find_spec('swift_fipo.plugin')
    origin = Path(spec.origin) if spec is not None and spec.origin is not None else None
    if origin is None or not origin.is_file():
        package = Path(__file__).resolve().parent
        return _fail('plugin-path', f'{package / "plugin.py"} is missing: this swift-fipo installation is incomplete; '
                                    'reinstall it (pip install --force-reinstall swift-fipo)', code=1)
    _say(str(origin))
    return 0


def plot(run_dirs: Sequence[str], output: str | None, labels: Sequence[str],
         groups: Sequence[Sequence[str]] = ()) -> int:
    """Write the metric charts of one run, of several on shared axes, or of groups of runs (mean and band)."""
    from swift_fipo.viz.plot import plot as plot_runs  # matplotlib only for this command
    from swift_fipo.viz.plot import plot_groups
    from swift_fipo.viz.rundir import RunDirError
    if groups:
        if run_dirs:
            raise RunDirError(f'{run_dirs[0]}: give run directories either alone or after a --group LABEL, '
                              'not both.')
        if labels:
            raise RunDirError('--label names single runs; a group is named by the first value after --group.')
        written = plot_groups([(group[0], group[1:]) for group in groups], output)
    else:
        if not run_dirs:
            raise RunDirError('give a RUN_DIR, or groups of them: --group LABEL RUN_DIR [RUN_DIR ...].')
        written = plot_runs(run_dirs, output, labels)
    _say(f'wrote {written}')
    return 0


def inspect(run_dir: str, output: str | None) -> int:
    """Write the per-token HTML page of a run captured with --fipo_log_tokens."""
    from swift_fipo.viz.inspect import inspect as inspect_run
    written = inspect_run(run_dir, output)
    _say(f'wrote {written}')
    return 0


def _one_line(text: str, stream: TextIO) -> str:
    """``text`` as one line the stream can encode: newlines (legal in file names) escaped, and what
    the encoding lacks (lone surrogates from undecodable file names) backslash-escaped."""
    text = text.replace('\r', '\\r').replace('\n', '\\n')
    encoding = getattr(stream, 'encoding', None) or 'utf-8'
    return text.encode(encoding, 'backslashreplace').decode(encoding)


def _say(text: str) -> None:
    print(_one_line(text, sys.stdout))


def _fail(command: str, message: str, code: int) -> int:
    print(_one_line(f'swift-fipo {command}: error: {message}', sys.stderr), file=sys.stderr)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog='swift-fipo', description='FIPO for ms-swift, TRL and custom loops.')
    commands = parser.add_subparsers(dest='command', required=True)
    commands.add_parser('doctor', help='report ms-swift version, which hooks are active, and why not')
    commands.add_parser('plugin-path', help='print the file for --external_plugins')
    plot_parser = commands.add_parser(
        'plot', help="PNG charts of a run's fipo/* metrics, reward, completion length and held-out results; "
        'several runs: compared; --group: mean and band per group of runs',
        description="RUN_DIR: ms-swift's --output_dir, one of its v*-* subdirectories, or a logging.jsonl; "
        'the newest logging.jsonl under it is read, with an eval.jsonl beside or above it. Several RUN_DIRs '
        'are drawn on shared axes; groups (--group, repeated) as the mean over their runs at each step with a '
        'band of +-1 standard deviation across them.')
    plot_parser.add_argument('run_dirs', nargs='*', metavar='RUN_DIR')
    plot_parser.add_argument('-o', '--output', help='PNG to write (default: beside the first logging.jsonl; '
                             'for groups: fipo_groups.png in the directory holding all runs)')
    plot_parser.add_argument('--label', action='append', default=[], help='legend name of a run, in order '
                             '(repeat per run; default: the directory name)')
    plot_parser.add_argument('--group', action='append', default=[], nargs='+', metavar=('LABEL', 'RUN_DIR'),
                             help='a group of runs (e.g. the seeds of one method) drawn as one mean line with a '
                             'band; repeat per group')
    inspect_parser = commands.add_parser(
        'inspect', help='self-contained HTML page of the tokens captured with --fipo_log_tokens, coloured by weight',
        description="RUN_DIR: ms-swift's --output_dir, one of its v*-* subdirectories, or a fipo_tokens.jsonl; "
        'the newest fipo_tokens.jsonl under it is read.')
    inspect_parser.add_argument('run_dir', metavar='RUN_DIR')
    inspect_parser.add_argument('-o', '--output', help='HTML to write (default: fipo_tokens.html beside the input)')
    args = parser.parse_args(argv)
    try:
        return _run(args)
    except KeyboardInterrupt:
        return _fail(args.command, 'interrupted', code=130)
    except BrokenPipeError:  # e.g. `swift-fipo doctor | head -1`: the reader left, nothing to report
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 1
    except Exception as error:  # last resort, never reached by known faults: no traceback at a user
        return _fail(args.command, f'unexpected {type(error).__name__}: {error} (please report this at '
                                   'the swift-fipo issue tracker)', code=1)


def _run(args: argparse.Namespace) -> int:
    if args.command in ('plot', 'inspect'):
        from swift_fipo.viz.rundir import RunDirError
        try:
            if args.command == 'plot':
                return plot(args.run_dirs, args.output, args.label, args.group)
            return inspect(args.run_dir, args.output)
        except (RunDirError, OSError) as error:  # a user's input problem: one line, no traceback
            return _fail(args.command, str(error), code=2)
    return {'doctor': doctor, 'plugin-path': plugin_path}[args.command]()


if __name__ == '__main__':
    sys.exit(main())
