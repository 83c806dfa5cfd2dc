"""Stand-in for ``vllm.inputs`` (see the package docstring)."""

from __future__ import annotations

from vllm import _Unavailable


class TokensPrompt(_Unavailable):
    pass
