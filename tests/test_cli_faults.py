"""Every `swift-fipo` command in a faulty environment: one clear line (or doctor's report), a non-zero
exit, never a traceback.

The environments are real, not mocked: the activation disabled by its variable; an interpreter that
never ran the .pth file (``python -S`` with site-packages on PYTHONPATH); ms-swift absent (``-S`` and
only swift-fipo on the path); ``import swift`` failing (a broken ``swift`` package ahead of the real
one); an installation missing plugin.py; matplotlib absent; directories, FIFOs and symlink loops
where files are expected.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import need, only_where

import swift_fipo
from swift_fipo.integrations.versions import installed_version

PACKAGE = Path(swift_fipo.__file__).resolve().parent
SITE_PACKAGES = sysconfig.get_paths()['purelib']
def needs_ms_swift(test: Callable[..., None]) -> Callable[..., None]:
    """An ms-swift test (deselected by -m 'not ms_swift'), left out where ms-swift is not installed."""
    installed = only_where(installed_version('ms-swift') is not None, 'ms-swift is not installed')
    return pytest.mark.ms_swift(installed(test))


@pytest.fixture(autouse=True)
def neutral_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`python -m` puts the working directory first on sys.path: not the repository's source tree."""
    monkeypatch.chdir(tmp_path)


def swift_fipo_command(*args: str, env: dict[str, str] | None = None, python_flags: tuple[str, ...] = (),
                       timeout: int = 600) -> subprocess.CompletedProcess:
    environment = {key: value for key, value in os.environ.items() if key not in ('SWIFT_FIPO_DISABLE', 'PYTHONPATH')}
    environment.update(env or {})
    return subprocess.run([sys.executable, *python_flags, '-m', 'swift_fipo.cli', *args], capture_output=True,
                          text=True, errors='replace', check=False, timeout=timeout, env=environment)


def only_swift_fipo(tmp_path: Path, without: tuple[str, ...] = ()) -> Path:
    """A directory holding a copy of the installed swift_fipo package and nothing else (minus ``without``)."""
    root = tmp_path / 'path'
    shutil.copytree(PACKAGE, root / 'swift_fipo', ignore=shutil.ignore_patterns('__pycache__', *without))
    return root


def assert_clean_failure(result: subprocess.CompletedProcess, command: str) -> None:
    assert result.returncode != 0
    assert 'Traceback' not in result.stderr + result.stdout, result.stderr


# --- doctor ------------------------------------------------------------------------------------------


# The active and the disabled state (a real import, ~20 s each):
# tests/test_cli_swift.py::test_doctor_reports_the_active_hook.


@needs_ms_swift
@pytest.mark.ms_swift
def test_doctor_without_the_activation_in_the_interpreter_exits_1():
    result = swift_fipo_command('doctor', env={'PYTHONPATH': SITE_PACKAGES}, python_flags=('-S', ))
    assert result.returncode == 1, result.stdout + result.stderr
    assert 'state         inactive' in result.stdout and ': hooked' not in result.stdout
    assert 'not hooked: the activation is not running in this interpreter' in result.stdout
    # The file is there (found from the distribution's record): the cause is -S, not the installation.
    assert f'  .pth file     {Path(SITE_PACKAGES) / "swift_fipo.pth"}\n' in result.stdout, result.stdout
    assert 'inactive in this interpreter (python -S: no site-packages directory was processed' in result.stdout


@needs_ms_swift  # an installed ms-swift whose import fails; without one, doctor says it is not installed
@pytest.mark.parametrize('failure', ['raise ImportError("numpy.core.multiarray failed to import")',
                                     'raise RuntimeError("CUDA driver initialization failed")',
                                     'raise SystemExit(3)', 'import sys; sys.exit("bad environment")'])
def test_doctor_when_import_swift_itself_fails(tmp_path: Path, failure: str):
    broken = tmp_path / 'broken' / 'swift'
    broken.mkdir(parents=True)
    (broken / '__init__.py').write_text(failure + '\n')
    result = swift_fipo_command('doctor', env={'PYTHONPATH': str(broken.parent)})
    assert_clean_failure(result, 'doctor')
    assert result.returncode == 1
    expected = failure.split('raise ')[-1].split('(')[0] if 'raise' in failure else 'SystemExit'
    assert f'swift.pipelines.base: cannot import it: {expected}' in result.stdout, result.stdout
    if installed_version('ms-swift') is not None:
        assert 'NOT computed by swift-fipo' in result.stdout


def test_doctor_without_any_host_exits_1(tmp_path: Path):
    result = swift_fipo_command('doctor', env={'PYTHONPATH': str(only_swift_fipo(tmp_path))}, python_flags=('-S', ))
    assert_clean_failure(result, 'doctor')
    assert result.returncode == 1
    assert '  no host is installed: swift-fipo serves ms-swift, verl, trl, openrlhf; install the one you train with' \
        in result.stdout, result.stdout
    assert 'verdict:' not in result.stdout


OTHER_HOSTS = ('ms-swift', 'verl', 'openrlhf')


@only_where(installed_version('trl') is not None and not any(map(installed_version, OTHER_HOSTS)),
            'needs an environment whose only host is TRL (.venv-trl-*)')
def test_doctor_where_trl_is_the_only_host_serves_it_and_exits_0():
    """TRL alone: one verdict for the installed host, exit 0, and no advice to install a host it does not need."""
    result = swift_fipo_command('doctor')
    assert result.returncode == 0, result.stdout + result.stderr
    assert 'trl.trainer.grpo_trainer.GRPOTrainer: served by swift_fipo.FIPOGRPOTrainer' in result.stdout
    assert [line for line in result.stdout.splitlines() if line.startswith('verdict:')] == [
        'verdict: swift_fipo.FIPOGRPOTrainer (trl) is computed by swift-fipo']
    assert 'pip install' not in result.stdout and 'no host is installed' not in result.stdout, result.stdout


def test_doctor_under_python_dash_s_blames_no_site_not_an_editable_install(tmp_path: Path):
    """``python -S`` processes no site-packages: the .pth is not searched for, so it is not "missing",
    and that, not the way swift-fipo was installed, is why the activation is not running."""
    result = swift_fipo_command('doctor', env={'PYTHONPATH': str(only_swift_fipo(tmp_path))}, python_flags=('-S', ))
    assert_clean_failure(result, 'doctor')
    assert 'editable' not in result.stdout, result.stdout
    assert '  .pth file     not found (python -S: no site-packages directory was processed)' in result.stdout
    assert ('  state         inactive in this interpreter (python -S: no site-packages directory was processed, '
            'so no .pth file ran;') in result.stdout, result.stdout


def test_doctor_with_a_swift_fipo_lacking_activation_ahead_on_the_path(tmp_path: Path):
    """A stale or partial copy of swift_fipo ahead of the installed one, without activation.py: the
    interpreter starts with the .pth file's one line, and doctor reports the copy in its own line."""
    from swift_fipo.integrations.hosts import HOSTS
    copy = only_swift_fipo(tmp_path, ('activation.py', ))
    result = swift_fipo_command('doctor', env={'PYTHONPATH': str(copy)})
    assert 'Traceback' not in result.stderr + result.stdout, result.stderr
    state = [line for line in result.stdout.splitlines() if line.startswith('  state ')]
    assert state == [f'  state         unavailable: {copy / "swift_fipo"} has no activation.py; an incomplete or '
                     'foreign swift_fipo is ahead on sys.path: remove it, or reinstall swift-fipo'], result.stdout
    served = [line for line in result.stdout.splitlines() if line.endswith(' is computed by swift-fipo')]
    if any(host.watched and host.is_installed() for host in HOSTS):  # a host the activation hooks: not served
        assert result.returncode == 1
        assert all('FIPOGRPOTrainer' in line for line in served), served  # TRL's trainer needs no activation
    else:  # TRL alone: FIPOGRPOTrainer is a class users pick, served without the activation
        assert result.returncode == 0 and served == ['verdict: swift_fipo.FIPOGRPOTrainer (trl) is computed by '
                                                     'swift-fipo'], result.stdout
    if installed_version('swift-fipo') is not None:  # the installed copy is named beside the one imported
        assert f'  package       {copy / "swift_fipo"}, not the installed ' in result.stdout
    # At most the .pth file's own line (it runs in this interpreter and finds the copy first).
    assert len(result.stderr.splitlines()) <= 1, result.stderr


def test_doctor_with_a_swift_fipo_lacking_activation_under_python_dash_s(tmp_path: Path):
    copy = only_swift_fipo(tmp_path, ('activation.py', ))
    result = swift_fipo_command('doctor', env={'PYTHONPATH': str(copy)}, python_flags=('-S', ))
    assert_clean_failure(result, 'doctor')
    assert result.returncode == 1 and result.stderr == ''
    assert f'{copy / "swift_fipo"} has no activation.py' in result.stdout
    # The other commands do not need the activation.
    assert swift_fipo_command('plugin-path', env={'PYTHONPATH': str(copy)}, python_flags=('-S', )).returncode == 0


def test_doctor_with_a_swift_fipo_whose_activation_does_not_import(tmp_path: Path):
    """An activation.py that is there but raises ImportError (a half-upgraded copy): doctor names the file and
    the error in its state line, and exits 1 without a traceback."""
    copy = only_swift_fipo(tmp_path)
    (copy / 'swift_fipo' / 'activation.py').write_text('raise ImportError("planted: a broken activation")\n')
    result = swift_fipo_command('doctor', env={'PYTHONPATH': str(copy)}, python_flags=('-S', ))
    assert_clean_failure(result, 'doctor')
    assert result.returncode == 1 and result.stderr == '', result.stderr
    assert (f'  state         unavailable: {copy / "swift_fipo" / "activation.py"} does not import (ImportError: '
            'planted: a broken activation); an incomplete or foreign swift_fipo') in result.stdout, result.stdout


@only_where(installed_version('swift-fipo') is not None, 'swift-fipo is not installed (only on the path)')
def test_doctor_finds_the_installed_pth_file():
    from swift_fipo import cli
    pth = cli._pth_file()
    assert pth is not None and pth.name == 'swift_fipo.pth' and pth.is_file()
    assert 'swift_fipo.activation' in pth.read_text()


def test_doctor_notes_another_swift_fipo_only_when_the_imported_one_is_not_installed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from types import SimpleNamespace

    from swift_fipo import cli
    imported = Path(swift_fipo.__file__).resolve()
    other = tmp_path / 'site-packages' / 'swift_fipo' / '__init__.py'
    other.parent.mkdir(parents=True)
    other.write_text('')
    for distribution, noted in ((None, False), (SimpleNamespace(locate_file=lambda name: imported), False),
                                (SimpleNamespace(locate_file=lambda name: tmp_path / 'absent' / name), False),
                                (SimpleNamespace(locate_file=lambda name: other), True)):
        monkeypatch.setattr(cli, '_distribution', lambda found=distribution: found)
        note = cli._shadowing()
        assert (note is not None) == noted, note
    assert note == f'{imported.parent}, not the installed {other.parent}: another swift_fipo is ahead on sys.path'


def test_doctor_explains_a_pth_file_outside_the_site_directories(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """``pip install --target DIR`` and PYTHONPATH=DIR: the file is there, but Python runs .pth files only
    in its site directories."""
    from swift_fipo import cli
    monkeypatch.setattr(cli, '_site_directories', lambda: [tmp_path / 'site-packages'])
    reason = cli._why_inactive(tmp_path / 'target' / 'swift_fipo.pth')
    assert reason == (f'{tmp_path / "target"} is not a site-packages directory of this interpreter: '
                      '.pth files run only there')
    assert cli._why_inactive(tmp_path / 'site-packages' / 'swift_fipo.pth') == 'the .pth file did not run'


# --- plugin-path -------------------------------------------------------------------------------------


def test_plugin_path_prints_an_existing_file():
    result = swift_fipo_command('plugin-path')
    assert result.returncode == 0 and Path(result.stdout.strip()).is_file()
    assert Path(result.stdout.strip()).name == 'plugin.py'


def test_plugin_path_of_an_incomplete_installation_is_one_line(tmp_path: Path):
    result = swift_fipo_command('plugin-path', env={'PYTHONPATH': str(only_swift_fipo(tmp_path, ('plugin.py', )))},
                                python_flags=('-S', ))
    assert_clean_failure(result, 'plugin-path')
    assert result.returncode == 1 and result.stdout == ''
    assert result.stderr.startswith('swift-fipo plugin-path: error: ') and len(result.stderr.splitlines()) == 1
    assert 'plugin.py is missing' in result.stderr and 'reinstall' in result.stderr


# --- plot / inspect ----------------------------------------------------------------------------------

LOGGING_ROW = '{"global_step/max_steps": "1/2", "reward": 0.5}\n'


def run_dir(tmp_path: Path) -> Path:
    version = tmp_path / 'run' / 'v0-20260101-120000'
    version.mkdir(parents=True)
    (version / 'logging.jsonl').write_text(LOGGING_ROW)
    (version / 'fipo_tokens.jsonl').write_text('{"step": 1, "tokens": [{"text": "a", "weight": 1.0}]}\n')
    return tmp_path / 'run'


def fault(tmp_path: Path, kind: str) -> list[str]:
    """Arguments (after the command) for one faulty environment."""
    if kind == 'directory named like the file':
        (tmp_path / 'run' / 'logging.jsonl').mkdir(parents=True)
        (tmp_path / 'run' / 'fipo_tokens.jsonl').mkdir(parents=True)
        return [str(tmp_path / 'run')]
    if kind == 'fifo':
        os.mkfifo(tmp_path / 'pipe')
        return [str(tmp_path / 'pipe')]
    if kind == 'symlink loop':
        (tmp_path / 'loop').symlink_to(tmp_path / 'loop')
        return [str(tmp_path / 'loop')]
    if kind == 'output is a directory':
        (tmp_path / 'out').mkdir()
        return [str(run_dir(tmp_path)), '-o', str(tmp_path / 'out')]
    if kind == 'output below a file':
        (tmp_path / 'file').write_text('x')
        return [str(run_dir(tmp_path)), '-o', str(tmp_path / 'file' / 'chart.png')]
    raise AssertionError(kind)


FAULTS = ['directory named like the file', 'fifo', 'symlink loop', 'output is a directory', 'output below a file']


@pytest.mark.parametrize('command', ['plot', 'inspect'])
@pytest.mark.parametrize('kind', FAULTS)
def test_viewers_in_a_faulty_file_system_fail_with_one_line(tmp_path: Path, command: str, kind: str):
    need('matplotlib')
    result = swift_fipo_command(command, *fault(tmp_path, kind), timeout=120)
    assert_clean_failure(result, command)
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1, result.stderr
    assert result.stderr.startswith(f'swift-fipo {command}: error: ')


@pytest.mark.skipif(os.geteuid() == 0, reason='running as root: root reads files whatever their mode')
@pytest.mark.parametrize('command, name', [('plot', 'logging.jsonl'), ('inspect', 'fipo_tokens.jsonl')])
def test_viewers_on_an_unreadable_file(tmp_path: Path, command: str, name: str):
    root = run_dir(tmp_path)
    (root / 'v0-20260101-120000' / name).chmod(0)
    result = swift_fipo_command(command, str(root))
    assert_clean_failure(result, command)
    assert result.returncode == 2 and 'cannot read it' in result.stderr


def test_plot_without_matplotlib_names_the_fix(tmp_path: Path):
    root = run_dir(tmp_path)
    result = swift_fipo_command('plot', str(root), env={'PYTHONPATH': str(only_swift_fipo(tmp_path))},
                                python_flags=('-S', ))
    assert_clean_failure(result, 'plot')
    assert result.stderr.strip() == 'swift-fipo plot: error: swift-fipo plot needs matplotlib: pip install matplotlib'


@pytest.mark.parametrize('given, written', [('chart', 'chart.png'), ('chart.png', 'chart.png'),
                                            ('chart.svg', 'chart.svg'), ('chart.v2', 'chart.v2.png')])
def test_plot_reports_the_file_it_actually_wrote(tmp_path: Path, given: str, written: str):
    need('matplotlib')
    from swift_fipo import cli
    root = run_dir(tmp_path)
    result = swift_fipo_command('plot', str(root), '-o', str(tmp_path / given), timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f'wrote {tmp_path / written}'
    assert (tmp_path / written).is_file() and (tmp_path / written).stat().st_size > 0
    assert cli.main(['plot', str(root), '-o', str(tmp_path / 'again' / given)]) == 0


def test_odd_file_names_are_reported_on_one_line(tmp_path: Path):
    need('matplotlib')
    odd = tmp_path / 'new\nline' / 'run'
    odd.mkdir(parents=True)
    (odd / 'logging.jsonl').write_text(LOGGING_ROW)
    name = os.fsencode(str(tmp_path)) + b'/\xff\xfe$x$'  # not UTF-8, and mathtext for matplotlib
    os.makedirs(name)
    with open(name + b'/fipo_tokens.jsonl', 'wb') as handle:
        handle.write(b'{"step": 1, "tokens": [{"text": "a", "weight": 1.0}]}\n')
    for command, target in (('plot', str(odd)), ('inspect', os.fsdecode(name))):
        result = swift_fipo_command(command, target, timeout=120)
        assert result.returncode == 0, result.stderr
        assert len(result.stdout.splitlines()) == 1 and result.stdout.startswith('wrote ')
    missing = swift_fipo_command('plot', str(tmp_path / 'gone\nwith\nnewlines'))
    assert missing.returncode == 2 and len(missing.stderr.splitlines()) == 1
