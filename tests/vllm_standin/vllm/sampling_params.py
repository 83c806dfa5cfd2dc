from vllm import SamplingParams, _Unavailable  # noqa: F401


class StructuredOutputsParams(_Unavailable):
    pass


GuidedDecodingParams = StructuredOutputsParams
