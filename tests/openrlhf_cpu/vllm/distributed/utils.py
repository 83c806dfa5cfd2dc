"""Stand-in for ``vllm.distributed.utils`` (see the package docstring)."""

from __future__ import annotations

from vllm import _Unavailable


class StatelessProcessGroup(_Unavailable):
    pass
