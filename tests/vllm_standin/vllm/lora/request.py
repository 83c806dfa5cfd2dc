from vllm import _Unavailable


class LoRARequest(_Unavailable):
    pass
