"""Looking at FIPO runs: ``swift-fipo plot`` (metric charts) and ``swift-fipo inspect`` (per-token HTML).

Kept apart from the maths and the trainer integrations: nothing here is imported during training, and
matplotlib is imported only when a chart is drawn.
"""

from swift_fipo.viz.rundir import RunDirError

__all__ = ['RunDirError']
