"""Shared test set-up.

The suite tests the *installed* swift-fipo (non-editable, as users get it): its .pth activation file
imports ``swift_fipo`` at every interpreter start, pytest's included, so that copy is the one every
test sees. ``scripts/test.sh`` reinstalls it first; a stale install is refused here rather than tested.
"""

from __future__ import annotations

import filecmp
import os
import subprocess
import sys
from pathlib import Path

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
