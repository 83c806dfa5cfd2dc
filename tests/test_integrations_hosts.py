"""The table of hosts (swift_fipo/integrations/hosts.py) is the one list of watched modules: the
activation, each host's integration and every patcher named there agree with it."""

from __future__ import annotations

import ast
import functools
import importlib
import importlib.util
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import only_where

from swift_fipo import activation
from swift_fipo.integrations import hosts
from swift_fipo.integrations.diagnosis import Diagnosis
from swift_fipo.integrations.ms_swift.layout import native_fipo_installed

PACKAGE = Path(hosts.__file__).resolve().parent


def _defined_functions(module: str) -> set[str]:
    # read, not imported: the host integrations import torch and their host
    path = Path(importlib.util.find_spec(module).origin)
    return {node.name for node in ast.parse(path.read_text()).body if isinstance(node, ast.FunctionDef)}


def test_the_activation_watches_exactly_the_tables_modules():
    assert activation.WATCHED_MODULES == hosts.watched_modules()
    assert sum(len(host.watched) for host in hosts.HOSTS) == len(activation.WATCHED_MODULES)  # no module twice


def test_every_patcher_the_table_names_exists():
    for host in hosts.HOSTS:
        for module, patcher in host.watched.items():
            plugin_module, _, function = patcher.partition(':')
            assert function in _defined_functions(plugin_module), (host.name, module, patcher)


def _string_constants(path: Path) -> set[str]:
    return {node.value for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.Constant) and isinstance(node.value, str)}


def test_each_host_is_a_subpackage_with_a_layout_record():
    assert [host.package for host in hosts.HOSTS] == [f'swift_fipo.integrations.{name}' for name in hosts.HOST_PACKAGES]
    for host in hosts.HOSTS:
        assert host.layout.__name__ == f'{host.package}.layout'
        assert host.watched is host.layout.WATCHED
        assert host.name and host.distribution, host


def test_only_the_layout_record_spells_a_watched_module():
    # A host module renamed in a new release is then one edit: its layout record.
    for host in hosts.HOSTS:
        directory = PACKAGE / host.package.rpartition('.')[2]
        for path in directory.glob('*.py'):
            if path.name == 'layout.py':
                continue
            spelled = _string_constants(path) & (set(host.watched) | set(host.watched.values()))
            assert not spelled, f'{path.relative_to(PACKAGE)} spells {sorted(spelled)}: read it from the layout'


# What makes a string of a layout record a host identifier: a dotted module path, a class name, a private
# name, a module constant, a command-line option, or a source marker (a snippet of the host's code that a
# capability check reads).
# Plain words (an option's dest, a metric key, 'fipo') are not: FIPO's own vocabulary spells them too.
_DOTTED = re.compile(r'^[a-z_][a-z_0-9]*(\.[a-z_][a-z_0-9]*)+$')
_CLASS = re.compile(r'^_?[A-Z][A-Za-z0-9]*[a-z][A-Za-z0-9]*$')
_PRIVATE = re.compile(r'^_[a-z]\w*$')
_CONSTANT = re.compile(r'^[A-Z][A-Z0-9]*(_[A-Z0-9]+)+$')
_CODE = re.compile(r'[()\[\]"\'=]')  # a snippet of code, e.g. inputs["advantages"]


def _host_identifiers() -> dict[str, str]:
    """Every host identifier a layout record holds -> the constant that holds it (``ms_swift.FIPO_HOOK``)."""
    found: dict[str, str] = {}
    for host in hosts.HOSTS:
        tree = ast.parse(Path(host.layout.__file__).read_text())
        for node in tree.body:
            targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(
                node, ast.AnnAssign) else []
            names = [target.id for target in targets if isinstance(target, ast.Name)]
            if not names or names[0] in ('NAME', 'DISTRIBUTION') or node.value is None:
                continue
            for value in ast.walk(node.value):
                if not (isinstance(value, ast.Constant) and isinstance(value.value, str)):
                    continue
                text = value.value
                if (_DOTTED.match(text) or _CLASS.match(text) or _PRIVATE.match(text) or _CONSTANT.match(text)
                        or _CODE.search(text) or text.startswith('--') or 'MARKER' in names[0]):
                    found.setdefault(text, f'{host.package.rpartition(".")[2]}.{names[0]}')
    return found


def _overrides_calling_their_parent(tree: ast.AST) -> set[int]:
    """The ``super().name`` attributes inside a method called ``name``: an override must spell its own name."""
    calls = set()
    for function in ast.walk(tree):
        if isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for node in ast.walk(function):
                if (isinstance(node, ast.Attribute) and node.attr == function.name and isinstance(node.value, ast.Call)
                        and isinstance(node.value.func, ast.Name) and node.value.func.id == 'super'):
                    calls.add(id(node))
    return calls


def test_only_the_layout_records_spell_a_host_identifier():
    """A host's module paths, classes, private attributes, options and source markers are spelled in its
    layout record only: no string and no attribute of another swift_fipo module names one (imports aside: an
    import that a rename breaks fails at once, by name). A rename upstream is then one edit, in one place."""
    identifiers = _host_identifiers()
    assert {'swift.pipelines.base', '_has_teacher_explicit', 'POLICY_LOSS_REGISTRY', 'PolicyLossConfig',
            'inputs["advantages"]', '--actor.policy_loss_type'} <= set(identifiers)  # the rule sees them
    spelled = []
    for path in sorted(PACKAGE.parent.rglob('*.py')):
        if path.name == 'layout.py' and path.parent.parent == PACKAGE:
            continue
        tree = ast.parse(path.read_text())
        overrides = _overrides_calling_their_parent(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in identifiers:
                spelled.append(f'{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.value!r} '
                               f'(layout: {identifiers[node.value]})')
            elif isinstance(node, ast.Attribute) and node.attr in identifiers and id(node) not in overrides:
                spelled.append(f'{path.relative_to(PACKAGE.parent)}:{node.lineno} .{node.attr} '
                               f'(layout: {identifiers[node.attr]})')
    assert not spelled, 'host identifiers spelled outside their layout record:\n' + '\n'.join(spelled)


def test_every_host_offers_the_interface():
    for host in hosts.HOSTS:
        exports = importlib.import_module(host.package).__getattr__.exports  # cheap: lazy names, no torch
        for name in ('install', 'uninstall', 'diagnose'):
            assert name in _defined_functions(exports[name]), (host.name, name, exports[name])


def test_the_table_imports_nothing():
    # It is read at every interpreter start: importing it must not pull in typing, torch or a host.
    code = ('import sys; before = set(sys.modules); import swift_fipo.integrations.hosts; '
            'print(sorted(set(sys.modules) - before))')
    result = subprocess.run([sys.executable, '-S', '-c', code], capture_output=True, text=True, check=True,
                            env={'PYTHONPATH': str(PACKAGE.parents[1])})
    imported = set(ast.literal_eval(result.stdout.strip()))
    assert 'swift_fipo.integrations.hosts' in imported
    heavy = {'typing', 'dataclasses', 'torch', 'numpy', 'swift', 'verl', 'trl', 'transformers'}
    assert not {name for name in imported if name.split('.')[0] in heavy}, imported


def test_every_fipo_option_has_one_ms_swift_flag():
    # The maths knows no host's spelling of its options: ms-swift's flags live in its layout record.
    import dataclasses

    from swift_fipo.config import FIPOConfig
    from swift_fipo.integrations.ms_swift import layout

    assert list(layout.FLAG_NAMES) == [field.name for field in dataclasses.fields(FIPOConfig)]
    assert len(set(layout.FLAG_NAMES.values())) == len(layout.FLAG_NAMES)


class _RecordingHost(hosts.Host):
    """A host of the table's kind whose integration records calls instead of importing a framework."""

    def __init__(self, name: str, installed: bool, served: bool = True) -> None:
        super().__init__(SimpleNamespace(NAME=name, DISTRIBUTION=name, WATCHED={f'{name}.module': 'x:y'},
                                         __name__=f'swift_fipo.integrations.{name}.layout'))
        self.installed, self.served, self.calls = installed, served, []

    def is_installed(self) -> bool:
        return self.installed

    def integration(self) -> SimpleNamespace:
        def diagnose() -> Diagnosis:
            diagnosis = Diagnosis()
            diagnosis.say(f'{self.name}.module: looked at')
            diagnosis.judge(f'{self.name} fipo', self.served)
            return diagnosis

        return SimpleNamespace(install=lambda: self.calls.append('install') or {'patched': True},
                               uninstall=lambda: self.calls.append('uninstall'), diagnose=diagnose)


def test_install_and_uninstall_loop_over_the_installed_hosts(monkeypatch):
    table = (_RecordingHost('alpha', installed=True), _RecordingHost('beta', installed=False))
    monkeypatch.setattr(hosts, 'HOSTS', table)
    assert hosts.install() == {'alpha': {'patched': True}}
    hosts.uninstall()
    assert table[0].calls == ['install', 'uninstall'] and table[1].calls == []
    assert hosts.install('beta') == {'beta': {'patched': True}}  # asked for by name: tried, installed or not
    with pytest.raises(KeyError, match="no host 'gamma'; hosts: alpha, beta"):
        hosts.install('gamma')


@pytest.mark.parametrize('served', [True, False])
def test_doctor_reports_every_installed_host_of_the_table(monkeypatch, capsys, served):
    from swift_fipo import cli
    table = (_RecordingHost('alpha', installed=True), _RecordingHost('beta', installed=True, served=served),
             _RecordingHost('gamma', installed=False))
    monkeypatch.setattr(cli, 'HOSTS', table)
    code = cli.doctor()
    out = capsys.readouterr().out
    assert '  alpha.module: looked at' in out and '  beta.module: looked at' in out and 'gamma.module' not in out
    assert 'verdict: alpha fipo is computed by swift-fipo' in out
    assert ('verdict: beta fipo is computed by swift-fipo' in out) == served
    assert code == (0 if served else 1)


def test_doctor_judges_the_installed_hosts_wherever_they_stand_in_the_table(monkeypatch, capsys):
    """The table's first host not installed, a later one served: exit 0, and no advice to install anything."""
    from swift_fipo import cli
    monkeypatch.setattr(cli, 'HOSTS', (_RecordingHost('alpha', installed=False),
                                       _RecordingHost('beta', installed=True)))
    code = cli.doctor()
    out = capsys.readouterr().out
    assert code == 0, out
    hooks_part = out.split('hooks (')[1]
    assert 'verdict: beta fipo is computed by swift-fipo' in hooks_part and 'alpha' not in hooks_part
    assert 'install' not in hooks_part, out
    # Nothing installed: the one place doctor names hosts to install, all of them, and exit 1.
    monkeypatch.setattr(cli, 'HOSTS', (_RecordingHost('alpha', installed=False),
                                       _RecordingHost('beta', installed=False)))
    assert cli.doctor() == 1
    assert '  no host is installed: swift-fipo serves alpha, beta; install the one you train with' in \
        capsys.readouterr().out


# --- uninstall() reverts swift-fipo's own patches only (issue 27 item 6) ------------------------------------


class _Greeter:
    def greet(self) -> str:
        return 'hello'


def _shout(original):
    @functools.wraps(original)
    def shout(self) -> str:
        return original(self).upper()

    return shout


def _exclaim(function):
    """Someone else's wrapper, made the usual way: functools.wraps copies the wrapped function's attributes."""
    @functools.wraps(function)
    def exclaim(self) -> str:
        return function(self) + '!'

    return exclaim


def test_a_wrapper_around_a_patch_is_not_taken_for_the_patch():
    from swift_fipo.integrations.patches import Patch, PatchConflict, PatchSet, is_patch
    original = _Greeter.greet
    patch_set = PatchSet([Patch(_Greeter, 'greet', _shout, 'shouting')])
    patch_set.apply()
    patched = _Greeter.greet
    _Greeter.greet = _exclaim(patched)  # someone wraps swift-fipo's patch, copying its marks
    try:
        assert is_patch(patched) and not is_patch(_Greeter.greet)
        patch_set.apply()  # ours is underneath: not wrapped a second time
        assert _Greeter().greet() == 'HELLO!'
        with pytest.raises(PatchConflict, match=rf"_Greeter\.greet is now exclaim \({re.escape(__file__)}:\d+\), a "
                                                r"wrapper someone set around swift-fipo's patch \(shouting\)"):
            patch_set.revert()
        assert _Greeter().greet() == 'HELLO!'  # left as it was: their wrapper and, under it, the patch
        _Greeter.greet = patched  # they take their wrapper off: now it reverts, exactly
        patch_set.revert()
        assert _Greeter.greet is original and _Greeter().greet() == 'hello'
    finally:
        _Greeter.greet = original


@pytest.mark.ms_swift
@only_where(native_fipo_installed(), 'this ms-swift predates native FIPO (4.2.2), or none is installed: no '
            '_compute_fipo_influence to wrap (the legacy hook: tests/test_integrations_ms_swift_legacy.py)')
def test_uninstall_leaves_a_wrapper_around_ms_swifts_patched_trainer_and_says_why():
    """On ms-swift's real GRPO trainer class: a user's functools.wraps wrapper around the patched FIPO hook
    survives uninstall(), which refuses naming it; without the wrapper, uninstall restores ms-swift's own."""
    from conftest import need
    need('swift', 'ms-swift')
    import swift_fipo
    from swift_fipo.integrations.ms_swift import hooks as ms_swift_hooks
    from swift_fipo.integrations.ms_swift import layout as ms_swift_layout
    from swift_fipo.integrations.patches import PatchConflict, is_patch
    swift_fipo.install('ms-swift')
    module = sys.modules[ms_swift_layout.module_path(ms_swift_layout.HF_TRAINER_MODULE)]
    trainer = next(cls for cls in ms_swift_hooks.trainer_classes(module) if ms_swift_layout.FIPO_HOOK in vars(cls))
    hook = ms_swift_layout.FIPO_HOOK
    patched = vars(trainer)[hook]
    native = ms_swift_hooks.native_fipo_influence(trainer)
    assert is_patch(patched) and not is_patch(native)

    @functools.wraps(patched)
    def users_wrapper(*args, **kwargs):
        return patched(*args, **kwargs)

    setattr(trainer, hook, users_wrapper)
    try:
        with pytest.raises(PatchConflict, match=f'{trainer.__qualname__}.{hook} is now users_wrapper '
                                                rf"\({re.escape(__file__)}:\d+\), a wrapper someone set around "
                                                "swift-fipo's patch"):
            swift_fipo.uninstall('ms-swift')
        assert vars(trainer)[hook] is users_wrapper  # not replaced by ms-swift's original
        setattr(trainer, hook, patched)
        swift_fipo.uninstall('ms-swift')
        assert vars(trainer)[hook] is native and not ms_swift_hooks.is_patched(trainer)
    finally:
        swift_fipo.install('ms-swift')  # the activation had patched this process: leave it so for other tests
    assert ms_swift_hooks.is_patched(trainer)


REPO = Path(__file__).resolve().parents[1]


def _mutation_targets(monkeypatch) -> dict[str, tuple[str, ...]]:
    """scripts/mutate.py's target files -> the test files their mutants run against."""
    monkeypatch.setattr(sys, 'path', list(sys.path))  # the script puts the repository first; undone after
    spec = importlib.util.spec_from_file_location('swift_fipo_mutate', REPO / 'scripts' / 'mutate.py')
    script = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, script)  # its dataclasses look their module up by name
    spec.loader.exec_module(script)
    return script.target_files([])


def test_every_host_of_the_table_is_mutation_tested(monkeypatch):
    targets = _mutation_targets(monkeypatch)
    for host in hosts.HOSTS:
        source = REPO / 'swift_fipo' / 'integrations' / host.package.rpartition('.')[2]
        code = sorted(str(path.relative_to(REPO)) for path in source.glob('*.py')
                      if path.name != '__init__.py')
        untested = [path for path in code if path not in targets]
        assert code and not untested, f'{host.name}: scripts/mutate.py has no tests for {untested}'
        for path in code:
            assert all((REPO / test).is_file() for test in targets[path]), (path, targets[path])


def test_every_host_of_the_table_has_its_pyproject_extra():
    import tomllib
    extras = tomllib.loads((REPO / 'pyproject.toml').read_text())['project']['optional-dependencies']
    for host in hosts.HOSTS:
        requirements = extras.get(host.distribution, [])
        assert any(re.match(rf'{re.escape(host.distribution)}\b', requirement) for requirement in requirements), \
            f'pyproject.toml: no extra {host.distribution!r} that installs {host.distribution} ({host.name})'
