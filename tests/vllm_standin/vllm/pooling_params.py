from vllm import _Unavailable


class PoolingParams(_Unavailable):
    pass
