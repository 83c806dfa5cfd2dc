"""Activation through the .pth file, in fresh interpreters of the test environment."""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import subprocess
import sys
import types

import pytest
from conftest import need

from swift_fipo import activation


def _python(code: str, **env: str) -> subprocess.CompletedProcess:
    environment = {key: value for key, value in os.environ.items() if key != activation.DISABLE_ENV}
    return subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=False,
                          env={**environment, **env}, cwd=os.path.dirname(sys.executable))


def test_plain_interpreter_start_registers_only_the_watcher():
    result = _python('import sys, json; print(json.dumps([sorted(sys.modules), '
                     '[type(f).__name__ for f in sys.meta_path]]))')
    assert result.returncode == 0, result.stderr
    modules, finders = json.loads(result.stdout)
    assert 'swift_fipo.activation' in modules, 'the .pth file did not run: is swift-fipo pip-installed?'
    heavy = [name for name in modules if name.split('.')[0] in ('torch', 'swift', 'numpy', 'transformers', 'typing')]
    assert heavy == []
    assert finders.count('TrainerImportWatcher') == 1
    assert result.stderr == ''


def test_disable_variable_turns_activation_off():
    result = _python('import sys; print(any(type(f).__name__ == "TrainerImportWatcher" for f in sys.meta_path))',
                     SWIFT_FIPO_DISABLE='1')
    assert result.stdout.strip() == 'False', result.stderr


@pytest.mark.ms_swift
@pytest.mark.parametrize('disabled', [False, True])
def test_importing_the_trainer_module_patches_it(disabled):
    need('swift', 'ms-swift')
    from swift_fipo.integrations.ms_swift.layout import module_path
    code = (f'import {module_path("swift.rlhf_trainers.grpo_trainer")} as m; '
            'from swift_fipo.integrations.ms_swift import is_patched; '
            'import sys; print(is_patched(m.GRPOTrainer), "torch" in sys.modules)')
    result = _python(code, **({'SWIFT_FIPO_DISABLE': '1'} if disabled else {}))
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split()[-2:] == [str(not disabled), 'True']


def test_a_failing_patch_is_reported_not_raised(capsys):
    broken = types.ModuleType('swift.rlhf_trainers.grpo_trainer')  # defines no trainer class
    assert activation._patch(broken) is False
    err = capsys.readouterr().err
    assert 'could not hook swift.rlhf_trainers.grpo_trainer (RuntimeError: ' in err
    assert 'Traceback' not in err and err.count('\n') == 1


def test_watcher_ignores_unrelated_modules():
    watcher = activation.TrainerImportWatcher()
    assert watcher.find_spec('json', None) is None
    assert watcher.find_spec('swift.rlhf_trainers.not_a_trainer', None) is None


def test_a_broken_swift_fipo_earlier_on_the_path_costs_one_line_not_a_traceback(tmp_path):
    """Another ``swift_fipo`` (a stale checkout, a namesake) ahead of site-packages has no activation
    module: the .pth line reports it in one line and the interpreter runs on."""
    (tmp_path / 'swift_fipo').mkdir()
    (tmp_path / 'swift_fipo' / '__init__.py').write_text('')
    result = _python('print("still running")', PYTHONPATH=str(tmp_path))
    assert result.returncode == 0 and result.stdout == 'still running\n'
    assert 'Traceback' not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith('[swift-fipo] not activated: ModuleNotFoundError'), result.stderr


# Every word is_disabled documents (its tuple), in the spellings a user types; and words that must not disable.
DISABLE_WORDS = ['1', 'true', 'yes', 'on', 'TRUE', 'Yes', ' on ', 'On\n']
NOT_DISABLING = ['', '0', 'false', 'no', 'off', 'disable', '2', 'y']


@pytest.mark.parametrize('word', DISABLE_WORDS + NOT_DISABLING)
def test_every_documented_disable_word_turns_the_real_activation_off(word):
    result = _python('import sys; print(any(type(f).__name__ == "TrainerImportWatcher" for f in sys.meta_path))',
                     SWIFT_FIPO_DISABLE=word)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(word not in DISABLE_WORDS), (repr(word), result.stderr)


@pytest.fixture
def recorded_patches(monkeypatch: pytest.MonkeyPatch) -> list:
    """The modules the ms-swift patcher is called with (the patcher itself replaced by a recorder),
    in an interpreter whose meta path has no watcher yet."""
    ms_swift = importlib.import_module('swift_fipo.integrations.ms_swift.hooks')
    seen: list = []
    monkeypatch.setattr(ms_swift, 'patch_module', seen.append)
    monkeypatch.setattr(sys, 'meta_path', [finder for finder in sys.meta_path
                                           if not isinstance(finder, activation.TrainerImportWatcher)])
    monkeypatch.delenv(activation.DISABLE_ENV, raising=False)
    return seen


MEGATRON = 'swift.megatron.trainers.grpo_trainer'


def test_the_megatron_trainer_module_is_watched_and_patched_when_imported(tmp_path, recorded_patches):
    """`megatron rlhf` imports swift.megatron.trainers.grpo_trainer only in its workers, after start-up:
    the watcher must catch that import and hand the fresh module to the ms-swift patcher."""
    (tmp_path / 'grpo_trainer.py').write_text('class MegatronGRPOTrainer:\n    pass\n')
    spec = activation.TrainerImportWatcher().find_spec(MEGATRON, [str(tmp_path)])
    assert spec is not None and isinstance(spec.loader, activation._PatchingLoader)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert recorded_patches == [module] and module.MegatronGRPOTrainer.__name__ == 'MegatronGRPOTrainer'


@pytest.mark.parametrize('word', [None, *DISABLE_WORDS])
def test_activate_patches_an_already_imported_megatron_module_unless_disabled(recorded_patches, monkeypatch, word):
    module = types.ModuleType(MEGATRON)
    monkeypatch.setitem(sys.modules, MEGATRON, module)
    if word is not None:
        monkeypatch.setenv(activation.DISABLE_ENV, word)
    activation.activate()
    assert activation.watcher_installed() == (word is None)
    assert (module in recorded_patches) == (word is None)


def _watched_name() -> str:
    return next(iter(activation.WATCHED_MODULES))


class _FixedFinder:
    """A meta-path finder that claims one module name with a given loader."""

    def __init__(self, name: str, loader: object) -> None:
        self.name, self.loader = name, loader

    def find_spec(self, fullname: str, path: object, target: object = None) -> object:
        return importlib.util.spec_from_loader(fullname, self.loader) if fullname == self.name else None


def test_only_loaders_with_exec_module_are_wrapped(monkeypatch: pytest.MonkeyPatch):
    """A finder's spec is wrapped to patch the module after it runs, which needs exec_module; a loader without
    it (the legacy load_module protocol) is left as it is, so the import works as without swift-fipo."""

    class LegacyLoader:
        def load_module(self, fullname: str) -> types.ModuleType:
            raise AssertionError('never called here')

    class ModernLoader(LegacyLoader):
        def exec_module(self, module: types.ModuleType) -> None:
            pass

    name, watcher = _watched_name(), activation.TrainerImportWatcher()
    for loader, wrapped in ((LegacyLoader(), False), (ModernLoader(), True)):
        monkeypatch.setattr(sys, 'meta_path', [watcher, _FixedFinder(name, loader)])
        spec = watcher.find_spec(name, None)
        assert spec is not None and isinstance(spec.loader, activation._PatchingLoader) is wrapped
        assert (spec.loader._loader if wrapped else spec.loader) is loader
    assert watcher.find_spec('json', None) is None  # an unwatched module is never looked at


def test_the_watcher_goes_first_on_the_meta_path(monkeypatch: pytest.MonkeyPatch):
    """Installed ahead of every finder, so it also sees a watched module that an earlier-registered finder
    (an editable install's, a custom import hook) would claim."""
    monkeypatch.delenv(activation.DISABLE_ENV, raising=False)
    others = [finder for finder in sys.meta_path if not isinstance(finder, activation.TrainerImportWatcher)]

    class ModernLoader:
        def exec_module(self, module: types.ModuleType) -> None:
            pass

    monkeypatch.setattr(sys, 'meta_path', [_FixedFinder(_watched_name(), ModernLoader()), *others])
    activation.activate()
    assert isinstance(sys.meta_path[0], activation.TrainerImportWatcher)
    assert sum(isinstance(finder, activation.TrainerImportWatcher) for finder in sys.meta_path) == 1


@pytest.mark.parametrize('word', DISABLE_WORDS[:2] + NOT_DISABLING[:1])
def test_the_variable_set_after_start_is_read_when_the_watched_module_loads(tmp_path, recorded_patches, monkeypatch,
                                                                            word):
    """The watcher was registered at start; the program sets the variable before the host module loads
    (a notebook, a launcher): that module loads unpatched."""
    (tmp_path / 'grpo_trainer.py').write_text('class MegatronGRPOTrainer:\n    pass\n')
    monkeypatch.setenv(activation.DISABLE_ENV, word)
    spec = activation.TrainerImportWatcher().find_spec(MEGATRON, [str(tmp_path)])
    disabled = word in DISABLE_WORDS
    assert (spec is None) == disabled  # left to the ordinary finders: no patching loader
    if not disabled:
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        assert recorded_patches == [module]


@pytest.mark.ms_swift
def test_disabling_in_process_before_import_swift_leaves_ms_swift_unpatched_and_doctor_says_so():
    """In a real interpreter with the .pth activation: the variable set in-process, then ms-swift's trainer imported
    as a program would; doctor in that process reports the variable as set late and ms-swift as not hooked."""
    need('swift', 'ms-swift')
    from swift_fipo.integrations.ms_swift.layout import module_path
    code = ('import os, sys\n'
            f'os.environ[{activation.DISABLE_ENV!r}] = "1"\n'
            f'import {module_path("swift.rlhf_trainers.grpo_trainer")} as m\n'
            'from swift_fipo.integrations.ms_swift import is_patched\n'
            'from swift_fipo import activation\n'
            'print("PATCHED", is_patched(m.GRPOTrainer), activation.watcher_installed())\n'
            'from swift_fipo.cli import doctor\n'
            'print("EXIT", doctor())\n')
    result = _python(code)
    assert result.returncode == 0, result.stderr[-3000:]
    assert 'PATCHED False True' in result.stdout, result.stdout[-3000:]  # the watcher ran, and left it alone
    assert 'disabled by SWIFT_FIPO_DISABLE=1, set after this interpreter started' in result.stdout
    assert 'hooked (FIPO computed by swift-fipo)' not in result.stdout and ': hooked' not in result.stdout
    assert 'verdict: `swift rlhf --loss_type fipo` is NOT computed by swift-fipo here' in result.stdout
    assert result.stdout.rstrip().endswith('EXIT 1'), result.stdout[-2000:]


@pytest.mark.parametrize('name', ['openrlhf.models.loss', 'openrlhf.trainer.ray.ppo_actor'])
def test_openrlhfs_modules_are_watched_and_handed_to_its_patcher(tmp_path, monkeypatch, name):
    """A fresh OpenRLHF process (the driver of ``python -m openrlhf.cli.train_ppo_ray`` and each Ray actor) is hooked
    only through the table of hosts and this watcher; runs where OpenRLHF is not installed (a stand-in module).
    Fails if OpenRLHF leaves the table. OpenRLHF's own suite runs the real processes."""
    openrlhf_hooks = importlib.import_module('swift_fipo.integrations.openrlhf.hooks')
    seen: list = []
    monkeypatch.setattr(openrlhf_hooks, 'patch_module', seen.append)
    monkeypatch.delenv(activation.DISABLE_ENV, raising=False)
    assert activation.WATCHED_MODULES[name] == 'swift_fipo.integrations.openrlhf.hooks:patch_module'
    (tmp_path / f'{name.rpartition(".")[2]}.py').write_text('VALUE = 1\n')
    spec = activation.TrainerImportWatcher().find_spec(name, [str(tmp_path)])
    assert spec is not None and isinstance(spec.loader, activation._PatchingLoader)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert seen == [module] and module.VALUE == 1
