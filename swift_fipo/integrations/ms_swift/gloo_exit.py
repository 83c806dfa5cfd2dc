"""A workaround for ms-swift's two-process CPU runs: gloo's worker threads finish before the interpreter goes."""

from __future__ import annotations

import atexit
import sys
import time

__all__ = ['GLOO_EXIT_GRACE_S', 'settle_gloo_workers_at_exit']

# Seconds a process with a gloo group holds back its exit (see settle_gloo_workers_at_exit).
GLOO_EXIT_GRACE_S = 0.5


def settle_gloo_workers_at_exit() -> None:
    """At interpreter exit, give gloo's worker threads time to finish before the interpreter is torn down.

    After a gloo collective completes, its worker thread still drops the tensors it held, which needs the
    GIL. If that thread is scheduled late (a busy CPU) and the main thread has begun finalizing, taking the
    GIL ends the thread inside a destructor: SIGABRT, "terminate called without an active exception", after
    all work is done (seen in two-process CPU runs of ``swift rlhf``; pytorch/pytorch#190489). Destroying
    the group does not help: gloo's threads live while anything references the group. So in a process whose
    default group uses gloo, an atexit handler sleeps GLOO_EXIT_GRACE_S, releasing the GIL and a core to
    those threads. It narrows the race; it cannot close it from outside torch. Registered once per process.
    """
    atexit.unregister(_settle_gloo_workers)
    atexit.register(_settle_gloo_workers)


def _settle_gloo_workers() -> None:
    distributed = sys.modules.get('torch.distributed')
    try:
        if distributed is None or not distributed.is_available() or not distributed.is_initialized():
            return
        if 'gloo' in str(distributed.get_backend_config()):  # 'gloo', 'cpu:gloo,cuda:nccl', ...
            time.sleep(GLOO_EXIT_GRACE_S)
    except Exception as error:  # noqa: BLE001 - the process is exiting; report, never raise
        print(f'[swift-fipo] could not wait for gloo at exit ({type(error).__name__}: {error})', file=sys.stderr)


