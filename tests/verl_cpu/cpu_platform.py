"""A CPU platform for verl's platform registry (test-only).

verl imports this module at start when ``VERL_USE_EXTERNAL_MODULES=verl_cpu.cpu_platform`` and picks it with
``VERL_PLATFORM=cpu``. It stands in for the accelerator, which this machine does not have: the
device is ``cpu``, collectives use gloo, memory and profiler calls do nothing, and verl's request for the
process-group backend ``cpu:gloo,cpu:gloo`` (its CPU half plus this device's) becomes plain ``gloo``.
Nothing else of verl is changed; its FSDP engine (registered for cuda, selected with
``VERL_ENGINE_DEVICE=cuda``) then runs on it.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from types import ModuleType, SimpleNamespace
from typing import Any

import torch
from verl.plugin.platform.platform_base import PlatformBase
from verl.plugin.platform.platform_manager import PlatformRegistry


def _nothing(*_args: Any, **_kwargs: Any) -> None:
    return None


def _cpu_device_module() -> ModuleType:
    # verl calls torch.<device>.empty_cache/memory_allocated/...; torch.cpu lacks most of them.
    module = ModuleType('verl_cpu_device')
    for name in dir(torch.cpu):
        if not name.startswith('_'):
            setattr(module, name, getattr(torch.cpu, name))
    for name in ('empty_cache', 'reset_peak_memory_stats', 'ipc_collect', 'set_device', 'manual_seed',
                 'manual_seed_all'):
        setattr(module, name, _nothing)
    for name in ('memory_allocated', 'memory_reserved', 'max_memory_allocated', 'max_memory_reserved'):
        setattr(module, name, lambda *_args, **_kwargs: 0)
    module.mem_get_info = lambda *_args, **_kwargs: (0, 0)
    module.is_available = lambda: True
    module.get_device_name = lambda *_args, **_kwargs: 'CPU'  # verl's flops table has a CPU entry
    module.device_count = lambda: 1
    module.current_device = lambda: 'cpu'
    module.get_rng_state = torch.get_rng_state
    module.set_rng_state = torch.set_rng_state
    module.memory = SimpleNamespace(_set_allocator_settings=_nothing)
    return module


def _one_backend_per_device(init_process_group: Callable[..., Any]) -> Callable[..., Any]:
    # verl asks for f'cpu:gloo,{device}:{backend}', which with this platform reads 'cpu:gloo,cpu:gloo';
    # torch refuses a device named twice. Ask for plain gloo instead.
    @functools.wraps(init_process_group)
    def init(*args: Any, backend: str | None = None, **kwargs: Any) -> Any:
        if backend == 'cpu:gloo,cpu:gloo':
            backend = 'gloo'
        return init_process_group(*args, backend=backend, **kwargs)
    return init


torch.distributed.init_process_group = _one_backend_per_device(torch.distributed.init_process_group)


@PlatformRegistry.register(platform='cpu')
class PlatformCPU(PlatformBase):
    """The host CPU as verl's device (one process per host CPU "device")."""

    def __init__(self) -> None:
        self._module = _cpu_device_module()

    @property
    def device_name(self) -> str:
        return 'cpu'

    @property
    def vendor_name(self) -> str:
        return 'cpu'

    @property
    def device_module(self) -> ModuleType:
        return self._module

    def is_available(self) -> bool:
        return True

    def current_device(self) -> str:  # verl passes it to .to() and torch.device(); 'cpu' suits both
        return 'cpu'

    def device_count(self) -> int:
        return 1

    def set_device(self, device_index: int) -> None:
        return None

    def synchronize(self, device_index: int | None = None) -> None:
        return None

    def manual_seed(self, seed: int) -> None:
        torch.manual_seed(seed)

    def manual_seed_all(self, seed: int) -> None:
        torch.manual_seed(seed)

    def set_allocator_settings(self, settings: str) -> None:
        return None

    def empty_cache(self) -> None:
        return None

    def get_device_capability(self, device_index: int = 0) -> tuple[int | None, int | None]:
        return None, None

    def communication_backend_name(self) -> str:
        return 'gloo'

    def visible_devices_envvar(self) -> str:
        return 'VERL_CPU_VISIBLE_DEVICES'

    @contextlib.contextmanager
    def nvtx_range(self, msg: str) -> Iterator[None]:
        yield

    def profiler_start(self) -> None:
        return None

    def profiler_stop(self) -> None:
        return None

    def ray_resource_name(self) -> str:
        # Ray refuses 'CPU' as a custom resource; a run declares logical GPUs (ray_init.num_gpus) instead.
        return 'GPU'

    def ray_noset_envvars(self) -> list[str]:
        return []

    def is_ipc_supported(self) -> bool:
        return False

    def cudart(self) -> Any:
        return None
