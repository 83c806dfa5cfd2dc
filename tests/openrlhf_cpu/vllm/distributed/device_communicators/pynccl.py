"""Stand-in for vLLM's NCCL communicator (see the package docstring)."""

from __future__ import annotations

from vllm import _Unavailable


class PyNcclCommunicator(_Unavailable):
    pass
