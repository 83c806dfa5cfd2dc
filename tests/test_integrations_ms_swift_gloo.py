"""ms-swift's exit workaround for CPU (gloo) runs: a process with a gloo group holds its exit back briefly,
so gloo's worker threads finish before the interpreter is torn down (``ms_swift.gloo_exit``)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from types import SimpleNamespace

import pytest

from swift_fipo.integrations.ms_swift import gloo_exit

# --- process exit ------------------------------------------------------------------------------------

# Prints how long the exit handlers registered after the marker took: atexit runs last in, first out, so
# the handler registered first runs after the plugin's, and the one registered last runs before it.
_EXIT_PROBE = textwrap.dedent("""
    import atexit, sys, time, torch, torch.distributed as dist
    from swift_fipo.integrations.ms_swift import gloo_exit
    marks = {}
    atexit.register(lambda: print('held back:', round(time.monotonic() - marks['start'], 3), flush=True))
    if sys.argv[2] != 'none':
        dist.init_process_group(sys.argv[2], init_method='file://' + sys.argv[1], rank=0, world_size=1)
        dist.all_gather([torch.empty(3)], torch.ones(3))
    for _ in range(int(sys.argv[3])):  # a host may ask more than once
        gloo_exit.settle_gloo_workers_at_exit()
    atexit.register(lambda: marks.setdefault('start', time.monotonic()))
""")


def _held_back(tmp_path, backend: str, requests: int) -> float:
    result = subprocess.run([sys.executable, '-c', _EXIT_PROBE, str(tmp_path / 'store'), backend, str(requests)],
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0 and 'could not wait' not in result.stderr, result.stderr[-3000:]
    return float(result.stdout.strip().splitlines()[-1].removeprefix('held back: '))


@pytest.mark.parametrize('requests', [1, 2])
def test_a_process_with_a_gloo_group_holds_its_exit_back_once(tmp_path, requests):
    assert gloo_exit.GLOO_EXIT_GRACE_S <= _held_back(tmp_path, 'gloo', requests) < 2 * gloo_exit.GLOO_EXIT_GRACE_S


def test_without_a_gloo_group_or_the_request_the_exit_is_not_held_back(tmp_path):
    assert _held_back(tmp_path, 'gloo', 0) < gloo_exit.GLOO_EXIT_GRACE_S
    assert _held_back(tmp_path, 'none', 1) < gloo_exit.GLOO_EXIT_GRACE_S


def _fake_distributed(backend_config: str, initialized: bool = True) -> SimpleNamespace:
    return SimpleNamespace(is_available=lambda: True, is_initialized=lambda: initialized,
                           get_backend_config=lambda: backend_config)


@pytest.mark.parametrize('distributed, waits', [
    (_fake_distributed('cpu:gloo,cuda:nccl'), True), (_fake_distributed('gloo'), True),
    (_fake_distributed('cuda:nccl'), False), (_fake_distributed('gloo', initialized=False), False), (None, False)])
def test_the_exit_handler_waits_only_where_a_gloo_group_is_alive(monkeypatch, capsys, distributed, waits):
    if distributed is None:  # torch.distributed never imported
        monkeypatch.delitem(sys.modules, 'torch.distributed', raising=False)
    else:
        monkeypatch.setitem(sys.modules, 'torch.distributed', distributed)
    slept = []
    monkeypatch.setattr(gloo_exit.time, 'sleep', slept.append)
    gloo_exit._settle_gloo_workers()
    assert slept == ([gloo_exit.GLOO_EXIT_GRACE_S] if waits else [])
    assert capsys.readouterr().err == ''


def test_the_exit_handler_reports_a_failure_and_does_not_raise(monkeypatch, capsys):
    def broken() -> str:
        raise RuntimeError('no backend')

    distributed = _fake_distributed('gloo')
    distributed.get_backend_config = broken
    monkeypatch.setitem(sys.modules, 'torch.distributed', distributed)
    gloo_exit._settle_gloo_workers()
    assert capsys.readouterr().err == '[swift-fipo] could not wait for gloo at exit (RuntimeError: no backend)\n'
