"""Stand-in for ``vllm.utils`` (see the package docstring)."""

from __future__ import annotations


def random_uuid() -> str:
    raise RuntimeError('random_uuid is the swift-fipo test stand-in for vLLM; vLLM is not installed.')
