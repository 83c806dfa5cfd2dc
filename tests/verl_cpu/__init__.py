"""Test-only helpers that run upstream verl's own actor worker on CPU (tests/test_verl_worker.py).

verl ships accelerator platforms only (nvidia, huawei NPU, rocm); ``platform`` adds a CPU one from
outside, through verl's own registry. Nothing here is part of the package."""
