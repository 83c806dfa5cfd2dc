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


# --- skips, and tests that do not apply here -------------------------------------------------------------
# A skip must mean "this kind of machine cannot run the test" (no GPU, no CUDA, no Transformer Engine, no
# vLLM; or running as root, which permission faults cannot be made for). Such reasons start with these words;
# with SWIFT_FIPO_STRICT_SKIPS=1 (set for every CI suite by scripts/test.sh) any other skip reason fails the
# run, so a failed import or a missing dependency cannot hide as a skip.
#
# A test written for another host release (an ms-swift line without native FIPO, an option this TRL lacks,
# a file for a host this environment does not install) is not skipped: it is left out of the run where it is
# collected and listed by reason at the end ("not run here"). Its condition is read from installed versions
# and files, never from a failed import, so it cannot hide a broken install either:
#   pytestmark = only_where(condition, reason)   a test, a class, a module, or pytest.param(..., marks=...)
#   not_applicable_here(reason)                  at module level, before imports that only exist elsewhere
#   need('module', 'distribution')               at module level: the file is left out without the distribution
MACHINE_KIND_SKIP = re.compile(r'^(no (GPU|CUDA|Transformer Engine|vLLM)|running as root)\b')
STRICT_SKIPS_ENV = 'SWIFT_FIPO_STRICT_SKIPS'
NOT_INSTALLED = 'not in this environment'
_NOT_APPLICABLE_PREFIX = 'does not apply here: '
_NOT_RUN = pytest.StashKey[collections.Counter]()  # reason -> tests (or files) left out


def only_where(condition: bool, reason: str) -> pytest.MarkDecorator:
    """Run the marked tests only where CONDITION holds; elsewhere leave them out, listed under REASON."""
    return pytest.mark.only_where(bool(condition), reason=reason)


def not_applicable_here(reason: str) -> None:
    """At a test module's top level: this file is for another host release; leave it out, listed under REASON."""
    pytest.skip(_NOT_APPLICABLE_PREFIX + reason, allow_module_level=True)


def need(module: str, distribution: str | None = None) -> ModuleType:
    """Import a test dependency. Where its distribution is installed the import is plain, so a broken
    install fails the run; only where the environment lacks the distribution altogether (a suite for
    another host) is the test skipped (at module level: the file is left out, see pytest_ignore_collect)."""
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


def _not_run(config: pytest.Config, reason: str) -> None:
    config.stash.setdefault(_NOT_RUN, collections.Counter())[reason] += 1


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """A test file that needs, at module level, a distribution this environment does not have at all is
    not collected (a suite for another host), rather than reported as skipped."""
    if collection_path.suffix != '.py' or not collection_path.name.startswith('test_'):
        return None
    missing = [name for name in _module_level_needs(collection_path) if not _installed(name)]
    if not missing:
        return None
    asked = [Path(arg.split('::')[0]).resolve() for arg in config.args] or [Path(config.rootpath)]
    if any(collection_path == path or path in collection_path.parents for path in asked):
        _not_run(config, f'{collection_path.name}: {missing[0]} is not installed in this environment')
    return True


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector):
    """A module that called ``not_applicable_here`` is collected as empty, its reason listed, not skipped."""
    outcome = yield
    report = outcome.get_result()
    if not (report.skipped and isinstance(collector, pytest.Module)):
        return
    message = _skip_reason(report)
    if message.startswith(_NOT_APPLICABLE_PREFIX):
        _not_run(collector.config, f'{collector.path.name}: {message.removeprefix(_NOT_APPLICABLE_PREFIX)}')
        outcome.force_result(pytest.CollectReport(report.nodeid, 'passed', None, []))


@pytest.hookimpl(trylast=True)  # after -m / -k, so that only tests they kept are listed as not run here
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    kept, left_out = [], []
    for item in items:
        unmet = [mark for mark in item.iter_markers('only_where') if not mark.args[0]]
        if unmet:
            left_out.append(item)
            _not_run(config, unmet[0].kwargs['reason'])
        else:
            kept.append(item)
    if left_out:
        config.hook.pytest_deselected(items=left_out)
        items[:] = kept


def ms_swift_version() -> tuple[int, ...]:
    """The installed ms-swift release as numbers, e.g. (4, 3, 2)."""
    return tuple(int(part) for part in re.findall(r'\d+', importlib.metadata.version('ms-swift'))[:3])


def _skip_reason(report: pytest.TestReport | pytest.CollectReport) -> str:
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    return ' '.join(reason.removeprefix('Skipped: ').split())  # one line each, for the CI summary


def _disallowed(reasons: list[str]) -> list[str]:
    if os.environ.get(STRICT_SKIPS_ENV, '').strip().lower() not in ('1', 'true', 'yes', 'on'):
        return []
    return sorted({reason for reason in reasons if not MACHINE_KIND_SKIP.match(reason)})


def _skip_reasons(config: pytest.Config) -> list[str]:
    reporter = config.pluginmanager.get_plugin('terminalreporter')
    reports = reporter.stats.get('skipped', []) if reporter is not None else []
    return [_skip_reason(report) for report in reports]


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _disallowed(_skip_reasons(session.config)) and exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def _count_section(terminalreporter, title: str, counts: collections.Counter) -> None:
    """A summary section of reasons, most frequent first (scripts/test.sh gathers these lines by title)."""
    if counts:
        terminalreporter.section(title)
        for reason, count in sorted(counts.items(), key=lambda item: (-item[1], item[0])):
            terminalreporter.line(f'{count:4d}  {reason}')


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    _count_section(terminalreporter, 'not run here: written for another environment',
                   config.stash.get(_NOT_RUN, collections.Counter()))
    reasons = _skip_reasons(config)
    if not reasons:
        return
    _count_section(terminalreporter, 'skips by reason', collections.Counter(reasons))
    disallowed = _disallowed(reasons)
    if disallowed:
        terminalreporter.line(f'FAILED ({STRICT_SKIPS_ENV}=1): skips for reasons other than the machine kind '
                              f'(a reason must match {MACHINE_KIND_SKIP.pattern!r}):', red=True)
        for reason in disallowed:
            terminalreporter.line(f'      {reason}', red=True)
