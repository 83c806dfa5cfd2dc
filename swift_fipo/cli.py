"""``swift-fipo`` command line: ``doctor`` (is FIPO hooked here, and if not, why), ``plugin-path``, and the
viewers ``plot`` (metric charts) and ``inspect`` (per-token HTML page)."""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from pathlib import Path
from typing import Optional, Sequence, TextIO

from swift_fipo import __version__, activation
from swift_fipo.integrations.contract import installed_version


def _pth_file() -> Optional[Path]:
    for entry in sys.path:
        candidate = Path(entry) / 'swift_fipo.pth'
        if candidate.is_file():
            return candidate
    return None


def _doctor_verl(lines: list[str]) -> bool:
    """Hook verl here as its processes are hooked; report. True if loss_mode=fipo works."""
    from swift_fipo.integrations import verl
    try:
        report = verl.install()
    except Exception as error:  # report, do not crash: this command exists to diagnose
        lines.append(f'  {verl.CORE_ALGOS_MODULE}: cannot hook: {error}')
        return False
    lines.append(f'  {verl.CORE_ALGOS_MODULE}: ' + ('fipo registered (loss_mode=fipo)' if report[verl.LOSS_MODE] is True
                                                     else str(report[verl.LOSS_MODE])))
    lines.append(f'  {verl.CONFIG_MODULE}: ' + ('PolicyLossConfig takes the fipo options'
                                                if report['fipo_options'] is True else str(report['fipo_options'])))
    return report[verl.LOSS_MODE] is True and report['fipo_options'] is True


def doctor() -> int:
    """Print the environment and the state of every hook; exit 1 if FIPO would not be ours."""
    lines = [f'swift-fipo {__version__} (python {sys.version.split()[0]})']
    for distribution in ('torch', 'ms-swift', 'transformers', 'trl', 'megatron-core', 'deepspeed', 'vllm', 'verl'):
        lines.append(f'  {distribution:<13} {installed_version(distribution) or "not installed"}')
    pth = _pth_file()
    lines.append('activation:')
    lines.append(f'  .pth file     {pth or "missing (installed editable or not via pip?)"}')
    if activation.is_disabled():
        lines.append(f'  state         disabled by {activation.DISABLE_ENV}={os.environ[activation.DISABLE_ENV]}')
    elif activation.watcher_installed():
        lines.append('  state         active: host modules are hooked when ms-swift or verl imports them')
    else:
        lines.append('  state         inactive in this interpreter (use --external_plugins or install())')
    has_verl = installed_version('verl') is not None
    healthy = installed_version('ms-swift') is not None

    lines.append('hooks:')
    if not healthy and not has_verl:
        lines.append('  ms-swift is not installed: pip install "ms-swift>=4.2.2"')
    elif healthy:
        from swift_fipo.integrations import ms_swift
        from swift_fipo.integrations.ms_swift_cli import PIPELINE_MODULE
        try:
            report = ms_swift.install(megatron=False)
        except Exception as error:  # report, do not crash: this command exists to diagnose
            report = {}
            healthy = False
            lines.append(f'  {ms_swift.HF_TRAINER_MODULE}: cannot hook: {error}')
        for module, classes in report.items():
            for name, has_hook in classes.items():
                if has_hook and module == PIPELINE_MODULE:
                    lines.append(f'  {module}.{name}: hooked (--fipo_* flags, presets, validation)')
                elif has_hook:
                    lines.append(f'  {module}.{name}: hooked (FIPO computed by swift-fipo)')
                else:
                    healthy = False
                    lines.append(f'  {module}.{name}: no _compute_fipo_influence hook: '
                                 f'--loss_type fipo needs {ms_swift.SUPPORTED_RANGE}')
        # Importing swift.megatron has side effects (and needs CUDA): only look it up.
        if importlib.util.find_spec('swift.megatron') is None:
            lines.append(f'  {ms_swift.MEGATRON_TRAINER_MODULE}: not available')
        else:
            lines.append(f'  {ms_swift.MEGATRON_TRAINER_MODULE}: hooked when `megatron rlhf` imports it')
    if has_verl:
        verl_healthy = _doctor_verl(lines)
        healthy = verl_healthy if installed_version('ms-swift') is None else healthy and verl_healthy
    print('\n'.join(lines))
    return 0 if healthy else 1


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


def plot(run_dirs: Sequence[str], output: Optional[str], labels: Sequence[str]) -> int:
    """Write the metric charts of one run, or of several on shared axes."""
    from swift_fipo.viz.plot import plot as plot_runs  # matplotlib only for this command
    written = plot_runs(run_dirs, output, labels)
    _say(f'wrote {written}')
    return 0


def inspect(run_dir: str, output: Optional[str]) -> int:
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


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog='swift-fipo', description='FIPO for ms-swift, TRL and custom loops.')
    commands = parser.add_subparsers(dest='command', required=True)
    commands.add_parser('doctor', help='report ms-swift version, which hooks are active, and why not')
    commands.add_parser('plugin-path', help='print the file for --external_plugins')
    plot_parser = commands.add_parser(
        'plot', help="PNG charts of a run's fipo/* metrics, reward and completion length; two runs: compared",
        description='RUN_DIR: ms-swift\'s --output_dir, one of its v*-* subdirectories, or a logging.jsonl; '
        'the newest logging.jsonl under it is read. Several RUN_DIRs are drawn on shared axes.')
    plot_parser.add_argument('run_dirs', nargs='+', metavar='RUN_DIR')
    plot_parser.add_argument('-o', '--output', help='PNG to write (default: beside the first logging.jsonl)')
    plot_parser.add_argument('--label', action='append', default=[], help='legend name of a run, in order '
                             '(repeat per run; default: the directory name)')
    inspect_parser = commands.add_parser(
        'inspect', help='self-contained HTML page of the tokens captured with --fipo_log_tokens, coloured by weight',
        description='RUN_DIR: ms-swift\'s --output_dir, one of its v*-* subdirectories, or a fipo_tokens.jsonl; '
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
                return plot(args.run_dirs, args.output, args.label)
            return inspect(args.run_dir, args.output)
        except (RunDirError, OSError) as error:  # a user's input problem: one line, no traceback
            return _fail(args.command, str(error), code=2)
    return {'doctor': doctor, 'plugin-path': plugin_path}[args.command]()


if __name__ == '__main__':
    sys.exit(main())
