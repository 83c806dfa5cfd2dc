"""A test-only stand-in for vLLM (CUDA wheels only; not installable on the CPU test machine).

OpenRLHF imports vLLM at module level (``openrlhf.trainer.ray.vllm_engine``, reached from every
``openrlhf.trainer.ray`` module and its command line), though a run without ``--vllm.num_engines``
never calls it. Everything here imports; nothing works: building an engine raises, so a test that
really needed vLLM fails loudly. Put ``tests/openrlhf_cpu`` on PYTHONPATH.
"""

from __future__ import annotations

from typing import Any

__version__ = '0.0.0+standin'


class _Unavailable:
    """Importable, never usable."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise RuntimeError(f'{type(self).__name__} is the swift-fipo test stand-in for vLLM; vLLM is not installed.')

    @classmethod
    def from_engine_args(cls, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(f'{cls.__name__} is the swift-fipo test stand-in for vLLM; vLLM is not installed.')


class SamplingParams(_Unavailable):
    pass


class AsyncEngineArgs(_Unavailable):
    pass


class AsyncLLMEngine(_Unavailable):
    pass
