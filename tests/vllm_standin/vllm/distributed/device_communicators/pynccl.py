from vllm import _Unavailable


class PyNcclCommunicator(_Unavailable):
    pass
