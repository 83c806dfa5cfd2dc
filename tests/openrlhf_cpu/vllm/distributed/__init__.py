"""Stand-in for ``vllm.distributed`` (see the package docstring)."""
