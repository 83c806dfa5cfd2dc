"""The maths' precision policy: float32, whatever autocast surrounds the call."""

from __future__ import annotations

import contextlib

import torch


def autocast_off(device: torch.device | None) -> contextlib.AbstractContextManager[None]:
    """A context in which ``device``'s autocast is off, so the maths stays in float32.

    Hosts often compute their loss under ``torch.autocast`` (verl's FSDP engine, Accelerate's CPU AMP,
    TRL with ``bf16=True``). Autocast would run the Future-KL matmuls in bf16/fp16: gamma rounds, sums
    lose three digits, and the float32 cap of the raw weight no longer fits the result's dtype. The
    tensors themselves are cast to float32 explicitly; this only stops autocast from casting them back.
    Cheap when autocast is off (one query, a null context).
    """
    if device is None:
        return contextlib.nullcontext()
    try:
        enabled = torch.is_autocast_enabled(device.type)
    except (RuntimeError, TypeError, ValueError):  # a device type autocast does not know (meta, ...)
        return contextlib.nullcontext()
    return torch.autocast(device.type, enabled=False) if enabled else contextlib.nullcontext()
