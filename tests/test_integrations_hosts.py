"""The table of hosts (swift_fipo/integrations/hosts.py) is the one list of watched modules: the
activation, each host's integration and every patcher named there agree with it."""

from __future__ import annotations

import ast
import importlib.util
import subprocess
import sys
from pathlib import Path

from swift_fipo import activation
from swift_fipo.integrations import hosts

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


def test_each_integration_reads_its_modules_from_the_table():
    source = (PACKAGE / 'ms_swift.py').read_text()
    assert 'WATCHED_MODULES = tuple(hosts.MS_SWIFT.watched)' in source
    verl_source = ast.parse((PACKAGE / 'verl.py').read_text())
    constants = {node.targets[0].id: node.value.value for node in verl_source.body
                 if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant)
                 and isinstance(node.targets[0], ast.Name) and node.targets[0].id.endswith('_MODULE')}
    assert set(constants.values()) == set(hosts.VERL.watched)


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
