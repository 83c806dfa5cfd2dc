"""Shared test set-up.

The suite tests the *installed* swift-fipo (non-editable, as users get it): its .pth activation file
imports ``swift_fipo`` at every interpreter start, pytest's included, so that copy is the one every
test sees. ``scripts/test.sh`` reinstalls it first; a stale install is refused here rather than tested.
"""

from __future__ import annotations

import ast
import collections
import filecmp
import importlib
import importlib.metadata
import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Optional

import pytest

REPO = Path(__file__).resolve().parents[1]
TINY_BUILDER = REPO / 'examples' / 'tiny' / 'build_tiny_model.py'


def pytest_configure(config: pytest.Config) -> None:
    import swift_fipo
    installed = Path(swift_fipo.__file__).parent
    source = REPO / 'swift_fipo'
    if installed == source:
        return
    stale = [str(path.relative_to(source)) for path in source.rglob('*.py')
             if not (installed / path.relative_to(source)).is_file()
             or not filecmp.cmp(path, installed / path.relative_to(source), shallow=False)]
    if stale:
        raise pytest.UsageError(f'the installed swift_fipo ({installed}) differs from the source in: '
                                f'{", ".join(sorted(stale))}. Reinstall it: bash scripts/setup.sh '
                                f'(or pip install --no-deps --force-reinstall .)')


@pytest.fixture(scope='session')
def tiny_run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory with the tiny model (model/) and dataset (train.jsonl), built once per session."""
    out = tmp_path_factory.mktemp('tiny')
    subprocess.run([sys.executable, str(TINY_BUILDER), str(out), '--rows', '32'], check=True,
                   capture_output=True, text=True, env={**os.environ, 'SWIFT_FIPO_DISABLE': '1'})
    return out


try:  # the property tests (tests/test_properties.py) skip without hypothesis
    from hypothesis import HealthCheck, settings
except ImportError:
    pass
else:
    # ci: bounded and derandomized (the same examples every run: never flaky, no example database
    # written); search: HYPOTHESIS_PROFILE=search for a longer random hunt on a developer's machine.
    _SLOW = [HealthCheck.too_slow, HealthCheck.data_too_large]
    settings.register_profile('ci', max_examples=150, derandomize=True, database=None, deadline=None,
                              suppress_health_check=_SLOW, print_blob=True)
    settings.register_profile('search', max_examples=3000, deadline=None, suppress_health_check=_SLOW,
                              print_blob=True)
    settings.load_profile(os.environ.get('HYPOTHESIS_PROFILE', 'ci'))


# --- skips ------------------------------------------------------------------------------------------------
# A skip must mean "this kind of machine cannot run the test" (no GPU, no CUDA, no Transformer Engine, no
# vLLM; or running as root, which permission faults cannot be made for). Such reasons start with these words;
# with SWIFT_FIPO_STRICT_SKIPS=1 (set by the ms-swift CI suites) any other skip reason fails the run, so a failed
# import or a missing dependency cannot hide as a skip. SWIFT_FIPO_ALLOWED_SKIPS, a regular expression,
# admits further reasons for a suite whose environment leaves something out on purpose.
MACHINE_KIND_SKIP = re.compile(r'^(no (GPU|CUDA|Transformer Engine|vLLM)|running as root)\b')
STRICT_SKIPS_ENV = 'SWIFT_FIPO_STRICT_SKIPS'
ALLOWED_SKIPS_ENV = 'SWIFT_FIPO_ALLOWED_SKIPS'
NOT_INSTALLED = 'not in this environment'
_NOT_COLLECTED = pytest.StashKey[list]()  # (file name, missing distribution) of files left out


def need(module: str, distribution: Optional[str] = None) -> ModuleType:
    """Import a test dependency. Where its distribution is installed the import is plain, so a broken
    install fails the run; only where the environment lacks the distribution altogether (a suite for
    another host) is the test skipped."""
    try:
        return importlib.import_module(module)
    except ImportError:
        name = distribution or module.split('.')[0]
        if not _installed(name):
            pytest.skip(f'{NOT_INSTALLED}: {name} is not installed', allow_module_level=True)
        raise


def _module_level_needs(path: Path) -> list[str]:
    """Distributions a test file asks for with a top-level ``need(...)`` call (read, not imported)."""
    try:
        tree = ast.parse(path.read_text())
    except (OSError, SyntaxError):
        return []
    found = []
    for node in tree.body:
        call = node.value if isinstance(node, (ast.Expr, ast.Assign)) else None
        if isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id == 'need' \
                and all(isinstance(arg, ast.Constant) for arg in call.args) and call.args:
            found.append(call.args[1].value if len(call.args) > 1 else call.args[0].value.split('.')[0])
    return found


def _installed(distribution: str) -> bool:
    try:
        importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> Optional[bool]:
    """A test file that needs, at module level, a distribution this environment does not have at all is
    not collected (a suite for another host), rather than reported as skipped."""
    if collection_path.suffix != '.py' or not collection_path.name.startswith('test_'):
        return None
    missing = [name for name in _module_level_needs(collection_path) if not _installed(name)]
    if not missing:
        return None
    asked = [Path(arg.split('::')[0]).resolve() for arg in config.args] or [Path(config.rootpath)]
    if any(collection_path == path or path in collection_path.parents for path in asked):
        config.stash.setdefault(_NOT_COLLECTED, []).append((collection_path.name, missing[0]))
    return True



def ms_swift_version() -> tuple[int, ...]:
    """The installed ms-swift release as numbers, e.g. (4, 3, 2)."""
    return tuple(int(part) for part in re.findall(r'\d+', importlib.metadata.version('ms-swift'))[:3])


def _skip_reason(report: pytest.TestReport) -> str:
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    return ' '.join(reason.removeprefix('Skipped: ').split())  # one line each, for the CI summary


def _disallowed(reasons: list[str]) -> list[str]:
    if os.environ.get(STRICT_SKIPS_ENV, '').strip().lower() not in ('1', 'true', 'yes', 'on'):
        return []
    extra = os.environ.get(ALLOWED_SKIPS_ENV)
    return sorted({reason for reason in reasons if not MACHINE_KIND_SKIP.match(reason)
                   and not (extra and re.search(extra, reason))})


def _skip_reasons(config: pytest.Config) -> list[str]:
    reporter = config.pluginmanager.get_plugin('terminalreporter')
    reports = reporter.stats.get('skipped', []) if reporter is not None else []
    return [_skip_reason(report) for report in reports]


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _disallowed(_skip_reasons(session.config)) and exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    not_collected = config.stash.get(_NOT_COLLECTED, [])
    if not_collected:
        by_distribution = collections.defaultdict(list)
        for name, distribution in not_collected:
            by_distribution[distribution].append(name)
        terminalreporter.section('not collected: not installed in this environment')
        for distribution, names in sorted(by_distribution.items()):
            terminalreporter.line(f'{distribution}: {", ".join(sorted(names))}')
    reasons = _skip_reasons(config)
    if not reasons:
        return
    terminalreporter.section('skips by reason')
    for reason, count in sorted(collections.Counter(reasons).items(), key=lambda item: (-item[1], item[0])):
        terminalreporter.line(f'{count:4d}  {reason}')
    disallowed = _disallowed(reasons)
    if disallowed:
        terminalreporter.line(f'FAILED ({STRICT_SKIPS_ENV}=1): skips for reasons other than the machine kind '
                              f'(a reason must match {MACHINE_KIND_SKIP.pattern!r}'
                              f'{" or " + ALLOWED_SKIPS_ENV if os.environ.get(ALLOWED_SKIPS_ENV) else ""}):', red=True)
        for reason in disallowed:
            terminalreporter.line(f'      {reason}', red=True)
