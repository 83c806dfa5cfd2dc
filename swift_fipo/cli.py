"""``swift-fipo`` command line: ``doctor`` (is FIPO hooked here, and if not, why), ``plugin-path``, and the
viewers ``plot`` (metric charts) and ``inspect`` (per-token HTML page)."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.metadata
import importlib.util
import io
import json
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Optional, Sequence, TextIO

import swift_fipo
from swift_fipo import __version__
from swift_fipo.integrations.contract import installed_version

try:
    from swift_fipo import activation
    _ACTIVATION_ERROR = ''
except ImportError as _error:  # a swift_fipo without activation.py ahead on sys.path: doctor says so
    activation = None  # type: ignore[assignment]
    _ACTIVATION_ERROR = f'{type(_error).__name__}: {_error}'

_PTH_NAME = 'swift_fipo.pth'
_DISTRIBUTION = 'swift-fipo'


def _distribution() -> Optional[importlib.metadata.Distribution]:
    try:
        return importlib.metadata.distribution(_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return None


def _site_directories() -> list[Path]:
    """The directories whose .pth files this interpreter runs at start-up (none under ``python -S``)."""
    import site
    return [Path(entry) for entry in (*site.getsitepackages(), site.getusersitepackages())]


def _pth_file() -> Optional[Path]:
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


def _pth_state(pth: Optional[Path]) -> str:
    """The `.pth file` line: where it is, or why there is none."""
    if pth is not None:
        return str(pth)
    if _editable():
        return 'missing: swift-fipo is installed editable (pip install -e), which does not install it'
    if sys.flags.no_site:  # not searched for at all, so not known to be missing
        return 'not found (python -S: no site-packages directory was processed)'
    return 'missing (installed editable or not via pip?)'


def _why_inactive(pth: Optional[Path]) -> str:
    """Why the watcher is not in this interpreter although nothing disabled it."""
    if sys.flags.no_site:
        return 'python -S: no site-packages directory was processed, so no .pth file ran'
    if pth is not None and pth.parent.resolve() not in {directory.resolve() for directory in _site_directories()}:
        return f'{pth.parent} is not a site-packages directory of this interpreter: .pth files run only there'
    return 'the .pth file did not run'


def _shadowing() -> Optional[str]:
    """A note when the swift_fipo imported here is not the installed one (another is ahead on sys.path)."""
    imported = Path(swift_fipo.__file__ or '').resolve().parent
    distribution = _distribution()
    installed = Path(str(distribution.locate_file('swift_fipo/__init__.py'))) if distribution is not None else None
    if installed is None or not installed.is_file() or installed.resolve().parent == imported:
        return None
    return f'{imported}, not the installed {installed.parent}: another swift_fipo is ahead on sys.path'


# What a training run imports (and the activation hooks), in that order: argument parsing, then the trainer.
_PIPELINE_MODULE = 'swift.pipelines.base'
_HF_TRAINER_MODULE = 'swift.rlhf_trainers.grpo_trainer'


def doctor() -> int:
    """Print the environment and whether ``swift rlhf --loss_type fipo`` is served by swift-fipo here.

    The state is observed, never made: ms-swift's modules are imported through the normal import
    system, so the activation hook (if this interpreter has it) patches them exactly as in a training
    run, and then the classes are inspected. Exit 0 if FIPO would be computed by swift-fipo, else 1.
    """
    lines = [f'swift-fipo {__version__} (python {sys.version.split()[0]})']
    for distribution in ('torch', 'ms-swift', 'transformers', 'trl', 'megatron-core', 'deepspeed', 'vllm', 'verl'):
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
                 else f'{package / "activation.py"} does not import ({_ACTIVATION_ERROR})')
        lines.append(f'  state         unavailable: {lacks}; an incomplete or foreign swift_fipo is ahead on sys.path: '
                     'remove it, or reinstall swift-fipo')
    elif activation.is_disabled():
        lines.append(f'  state         disabled by {activation.DISABLE_ENV}={os.environ[activation.DISABLE_ENV]}: '
                     'ms-swift runs its own code')
    elif activation.watcher_installed():
        lines.append('  state         active: host modules are hooked when ms-swift or verl imports them')
    else:
        lines.append(f'  state         inactive in this interpreter ({_why_inactive(pth)}; explicit routes: '
                     '--external_plugins "$(swift-fipo plugin-path)" or swift_fipo.install())')
    lines.append('hooks (host modules imported as a training run imports them):')
    has_swift, has_verl = installed_version('ms-swift') is not None, installed_version('verl') is not None
    verdicts = []
    if has_swift:
        swift_served = _ms_swift_hooks(lines)
        lines.append(_megatron_state())
        verdicts.append(('`swift rlhf --loss_type fipo`', swift_served))
    if has_verl:
        verdicts.append(('verl `policy_loss.loss_mode=fipo`', _verl_hooks(lines)))
    if not verdicts:
        lines.append('  ms-swift is not installed: pip install "ms-swift>=4.2.2" (or verl, see docs/verl.md)')
    for what, served in verdicts:
        lines.append(f'verdict: {what} is ' + ('computed by swift-fipo' if served else
                                                'NOT computed by swift-fipo here (see above)'))
    for line in lines:
        _say(line)
    return 0 if verdicts and all(served for _, served in verdicts) else 1


def _ms_swift_hooks(lines: list[str]) -> bool:
    """Import ms-swift's argument parsing and GRPO trainer modules, report each hook, and say whether
    swift-fipo serves fipo (both hooked)."""
    from swift_fipo.integrations import ms_swift_layout  # no torch
    pipeline_name, trainer_name = map(ms_swift_layout.module_path, (_PIPELINE_MODULE, _HF_TRAINER_MODULE))
    modules = {}
    for name in (pipeline_name, trainer_name):
        module, error, notes = _import_observed(name)
        lines.extend(f'  {note}' for note in notes)
        if module is None:
            lines.append(f'  {name}: cannot import it: {error}')
            return False
        modules[name] = module
    from swift_fipo.integrations import ms_swift, ms_swift_legacy  # after ms-swift: they import torch
    from swift_fipo.integrations.contract import is_patch

    pipeline = getattr(modules[pipeline_name], 'SwiftPipeline', None)
    flags_hooked = pipeline is not None and is_patch(vars(pipeline).get('_parse_args'))
    lines.append(f'  {pipeline_name}.SwiftPipeline: ' + ('hooked (--fipo_* flags, presets, validation)'
                                                           if flags_hooked else f'not hooked: {_why_not_hooked()}'))
    served = flags_hooked
    classes = ms_swift.trainer_classes(modules[trainer_name])
    if not classes:
        lines.append(f'  {trainer_name}: no GRPO trainer class found')
        return False
    for cls in classes:
        where = f'  {trainer_name}.{cls.__name__}: '
        legacy = ms_swift_layout.doctor_line(cls.__name__, ms_swift.is_patched(cls))
        if legacy:  # ms-swift 3.11 - 4.2.1: served without the native hook, or refused with this TRL
            served = served and ms_swift_layout.rollout_reuse_broken() is None
            lines.append(where + legacy)
        elif not hasattr(cls, '_compute_fipo_influence'):
            served = False
            if ms_swift_legacy.class_is_servable(cls):  # servable without the native hook, but not hooked
                lines.append(where + f'not hooked: {_why_not_hooked()}')
            else:
                lines.append(where + 'no _compute_fipo_influence hook: --loss_type fipo needs '
                             f'{ms_swift.SUPPORTED_RANGE}')
        elif ms_swift.is_patched(cls):
            lines.append(where + 'hooked (FIPO computed by swift-fipo)')
        else:
            served = False
            lines.append(where + f"not hooked: {_why_not_hooked()}; ms-swift's own FIPO would run")
    return served


def _verl_hooks(lines: list[str]) -> bool:
    """Import verl's config and policy-loss modules as a run does, report whether the activation
    hooked them, and say whether ``loss_mode=fipo`` is served (both hooked)."""
    config_module, config_error, config_notes = _import_observed('verl.workers.config.actor')
    core, core_error, core_notes = _import_observed('verl.trainer.ppo.core_algos')
    lines.extend(f'  {note}' for note in config_notes + core_notes)
    if core is None or config_module is None:
        lines.append(f'  verl: cannot import it: {core_error or config_error}')
        return False
    from swift_fipo.integrations import verl

    registered = getattr(core, 'POLICY_LOSS_REGISTRY', {}).get(verl.LOSS_MODE)
    if registered is verl.compute_policy_loss_fipo:
        loss_state = 'fipo registered (loss_mode=fipo)'
    elif verl.serves(core) is not None:
        loss_state = f'not registered: {verl.serves(core)}'
    elif registered is not None:
        loss_state = 'verl registers its own fipo loss; left alone'
    else:
        loss_state = f'not registered: {_why_not_hooked()}'
    lines.append(f'  {verl.CORE_ALGOS_MODULE}: {loss_state}')
    try:
        options = all(patch.is_applied() for patch in verl.config_patches(config_module).patches)
    except AttributeError as error:  # a verl without PolicyLossConfig / ActorConfig
        options, reason = False, str(error)
    else:
        reason = _why_not_hooked()
    lines.append(f'  {verl.CONFIG_MODULE}: ' + ('PolicyLossConfig takes the fipo options' if options
                                                else f'fipo options not hooked: {reason}'))
    return registered is verl.compute_policy_loss_fipo and options


def _import_observed(name: str) -> tuple[Optional[ModuleType], str, list[str]]:
    """``(module or None, error, notes)``: import ``name`` as a training run would. Whatever the import
    raises (``import swift`` itself may fail, some packages even exit) becomes one line; what it writes
    to stderr is kept back, except the activation's own reports, shortened to their first line."""
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
    notes = [line.removeprefix('[swift-fipo] ') for line in captured.getvalue().splitlines()
             if line.startswith('[swift-fipo] ')]
    return module, error, notes


def _why_not_hooked() -> str:
    if activation is None:
        return 'swift_fipo.activation is missing (see above)'
    if activation.is_disabled():
        return f'{activation.DISABLE_ENV} is set'
    if not activation.watcher_installed():
        return 'the activation is not running in this interpreter'
    return 'the activation could not patch it (see the note above)'


def _megatron_state() -> str:
    """Megatron's trainer is looked at, not imported: importing swift.megatron has side effects (and
    needs CUDA)."""
    name = '  swift.megatron.trainers.grpo_trainer (megatron rlhf): '
    if installed_version('megatron-core') is None:
        return name + 'unavailable: megatron-core is not installed (only `megatron rlhf` needs it)'
    from swift_fipo.integrations.ms_swift_cli import check_trainer_has_hook
    try:
        check_trainer_has_hook(megatron=True)
    except Exception as error:  # its message names the supported range
        return name + str(error)
    if activation is None or activation.is_disabled() or not activation.watcher_installed():
        return name + f'not hooked: {_why_not_hooked()}'
    return name + 'hooked when `megatron rlhf` imports it'


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
