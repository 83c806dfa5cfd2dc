from vllm import _Unavailable


class StatelessProcessGroup(_Unavailable):

    @staticmethod
    def create(*args, **kwargs):
        raise RuntimeError('StatelessProcessGroup is the swift-fipo test stand-in for vLLM; vLLM is not installed.')
