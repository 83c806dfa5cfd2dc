"""The package's import graph, read from the source (every import, at module level or inside a function):
no cycle, the maths knows no host, and each host integration knows only the shared layer and itself."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / 'swift_fipo'
INTEGRATIONS = 'swift_fipo.integrations'
# Every host is one subpackage of swift_fipo.integrations.
HOSTS = sorted(path.parent.name for path in (PACKAGE / 'integrations').glob('*/layout.py'))
# What any host may import besides itself: the maths and the shared layer (every module directly in
# integrations/ but the table of hosts, which loads them all).
SHARED_LAYER = {f'{INTEGRATIONS}.{path.stem}' for path in (PACKAGE / 'integrations').glob('*.py')
                if path.stem not in ('__init__', 'hosts')}
MATHS = {'swift_fipo._lazy', 'swift_fipo.config', 'swift_fipo.ops', 'swift_fipo.ops.future_kl',
         'swift_fipo.ops.influence', 'swift_fipo.ops.loss', 'swift_fipo.ops.precision'}
SHARED = MATHS | SHARED_LAYER


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix('').parts)
    return '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)


MODULES = {module_name(path): path for path in PACKAGE.rglob('*.py')}


def _type_checking_block(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == 'TYPE_CHECKING'


def imports_of(name: str) -> set[str]:
    """The package's modules that ``name`` imports anywhere in its source (not under ``if TYPE_CHECKING``)."""
    tree = ast.parse(MODULES[name].read_text())
    skipped = {id(inner) for node in ast.walk(tree) if _type_checking_block(node)
               for inner in ast.walk(node) if inner is not node}
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            # `from swift_fipo.integrations import ms_swift` imports a module, not a name
            found |= {f'{node.module}.{alias.name}' for alias in node.names}
    return {target for target in found if target in MODULES and target != name}


GRAPH = {name: imports_of(name) for name in MODULES}


def test_the_graph_is_read():
    assert 'swift_fipo.integrations.patches' in GRAPH['swift_fipo.integrations.verl.hooks']
    assert {'settings', 'metrics', 'patches', 'interception'} <= {name.rpartition('.')[2] for name in SHARED_LAYER}
    assert 'swift_fipo.integrations.ms_swift.legacy' in GRAPH['swift_fipo.integrations.ms_swift.hooks']
    assert {'ms_swift', 'trl', 'verl'} <= set(HOSTS)
    assert len(GRAPH) >= 20


def test_there_is_no_import_cycle():
    done: set[str] = set()

    def visit(name: str, path: list[str]) -> None:
        if name in path:
            raise AssertionError('import cycle: ' + ' -> '.join(path[path.index(name):] + [name]))
        if name in done:
            return
        for target in sorted(GRAPH[name]):
            visit(target, path + [name])
        done.add(name)

    for name in sorted(GRAPH):
        visit(name, [])


def test_the_maths_imports_no_integration():
    for name in MATHS:
        assert not {target for target in GRAPH[name] if '.integrations' in target or '.viz' in target}, name


def test_each_host_knows_only_the_shared_layer_and_itself():
    for host in HOSTS:
        package = f'{INTEGRATIONS}.{host}'
        own = {name for name in MODULES if name == package or name.startswith(package + '.')}
        for name in own:
            foreign = {target for target in GRAPH[name] - own - SHARED if target not in (INTEGRATIONS, 'swift_fipo')}
            assert not foreign, f'{name} imports {sorted(foreign)}'


def test_the_shared_layer_knows_no_host():
    for name in SHARED & set(MODULES):
        hosts = {target for target in GRAPH[name] if target.startswith(INTEGRATIONS + '.')} - SHARED
        assert not hosts, f'{name} imports {sorted(hosts)}'
