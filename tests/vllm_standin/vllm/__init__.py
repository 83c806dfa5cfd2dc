"""A stand-in for vLLM, for tests only: it satisfies the imports that ms-swift 4.1.x and 4.2.x run
when their GRPO trainer module loads (vLLM itself needs CUDA wheels and cannot be installed on the CPU
test machine). Nothing here works: every class refuses to be built, so a run that really needs vLLM
(``--use_vllm true``) fails loudly instead of pretending. Put its parent directory on PYTHONPATH.
"""

__version__ = '0.0.0+standin'


class _Unavailable:
    """Importable, never usable."""

    def __init__(self, *args, **kwargs):
        raise RuntimeError(f'{type(self).__name__} is the swift-fipo test stand-in for vLLM; vLLM is not installed.')


class AsyncEngineArgs(_Unavailable):
    pass


class AsyncLLMEngine(_Unavailable):
    pass


class EngineArgs(_Unavailable):
    pass


class LLMEngine(_Unavailable):
    pass


class RequestOutput(_Unavailable):
    pass


class LLM(_Unavailable):
    pass


class SamplingParams(_Unavailable):
    pass
