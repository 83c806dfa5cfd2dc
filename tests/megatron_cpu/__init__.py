"""Test-only: import ms-swift's real Megatron GRPO trainer and run megatron-core on a CPU machine.

Nothing here is part of swift-fipo. It fakes only what cannot exist on a CPU machine:

* Transformer Engine and triton (CUDA-only). mcore-bridge imports ``transformer_engine`` (and one kernel
  file imports ``triton``) at module level, but a model built with megatron-core's *local* layer spec
  never uses them. Stand-in modules sit in ``sys.modules`` only while mcore_bridge and the trainer module
  import, then are removed; peft and megatron-core probe for TE first, so they record "no TE".
  mcore-bridge assigns attributes on five TE classes that megatron-core leaves ``None`` without TE:
  they get placeholder classes that refuse to be instantiated.
* CUDA calls megatron-core makes on a CPU run: ``torch.cuda.current_device()`` in
  ``RotaryEmbedding.get_emb`` and ``GlobalMemoryBuffer.get_tensor`` answers ``cpu`` there, and
  ``CudaRNGStatesTracker.fork`` (needs a CUDA RNG state) is a no-op context (attention dropout is 0).
  (Batches carry the collator's explicit attention mask: without one, the torch softmax path would build
  its causal mask with ``device="cuda"``.)
  ``model_parallel_cuda_manual_seed`` is never called.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.machinery
import importlib.metadata
import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType

import torch

TRAINER_MODULE = 'swift.megatron.trainers.grpo_trainer'
STACK = ('megatron-core', 'mcore-bridge')  # the distributions the Megatron suite adds to ms-swift


def real_trainer_runs_here() -> bool:
    """True where tests/test_integrations_megatron_real.py runs ms-swift's real Megatron GRPO trainer: megatron-core
    and mcore-bridge beside an ms-swift >= 4.4 (its Ray GRPOLoss and OPD-RL check). Read from the installed
    distributions, never imported (mcore-bridge imports Transformer Engine)."""
    try:
        versions = [importlib.metadata.version(name) for name in ('ms-swift', *STACK)]
    except importlib.metadata.PackageNotFoundError:
        return False
    return tuple(int(part) for part in re.findall(r'\d+', versions[0])[:2]) >= (4, 4)
_NONE_TE_CLASSES = ('TEActivationOp', 'TEColumnParallelGroupedLinear', 'TEFusedMLP', 'TEGroupedLinear',
                    'TERowParallelGroupedLinear')


class _StandIn(ModuleType):
    """A module whose every attribute is another stand-in (classes and functions resolve lazily)."""

    def __init__(self, name: str):
        super().__init__(name)
        self.__spec__ = importlib.machinery.ModuleSpec(name, loader=None, is_package=True)
        self.__path__ = []

    def __getattr__(self, name: str):
        if name.startswith('__'):
            raise AttributeError(name)
        child = _StandIn(f'{self.__name__}.{name}')
        setattr(self, name, child)
        return child

    def __call__(self, *args, **kwargs):
        raise RuntimeError(f'{self.__name__} is a CPU test stand-in (Transformer Engine / triton need CUDA)')


def _null_context(*args, **kwargs):
    return contextlib.nullcontext()


def _stand_ins() -> dict[str, ModuleType]:
    te = _StandIn('transformer_engine')
    pytorch = te.pytorch
    pytorch.fp8_model_init = _null_context
    pytorch.fp8_autocast = _null_context
    modules = {'transformer_engine': te, 'transformer_engine.pytorch': pytorch,
               'transformer_engine_torch': _StandIn('transformer_engine_torch')}
    triton = _StandIn('triton')
    triton.jit = lambda fn=None, **kwargs: fn if fn is not None else (lambda f: f)
    triton.autotune = lambda *args, **kwargs: (lambda f: f)
    triton.heuristics = lambda *args, **kwargs: (lambda f: f)
    triton.Config = lambda *args, **kwargs: None
    modules.update({'triton': triton, 'triton.language': triton.language})
    return modules


def _placeholder(name: str) -> type:
    def refuse(self, *args, **kwargs):
        raise RuntimeError(f'{name} needs Transformer Engine (CUDA): a CPU test placeholder')
    return type(name, (torch.nn.Module,), {'__init__': refuse})


def import_trainer_module() -> ModuleType:
    """Import ``swift.megatron.trainers.grpo_trainer`` (the swift-fipo .pth hook patches it as it loads)."""
    if TRAINER_MODULE in sys.modules:
        return sys.modules[TRAINER_MODULE]
    if importlib.util.find_spec('transformer_engine') is not None:  # a CUDA machine with the real thing
        return importlib.import_module(TRAINER_MODULE)
    import peft  # noqa: F401  (records "no TE" before any stand-in exists)
    import peft.import_utils  # noqa: F401
    te_extension = importlib.import_module('megatron.core.extensions.transformer_engine')
    # Every megatron-core module that probes for TE is imported now, so that it records "no TE" (a module
    # first imported while the stand-ins are in place would bind them, e.g. isinstance(x, TELinear) fails).
    for module in _te_probing_core_modules():
        try:
            importlib.import_module(module)
        except ImportError as error:
            if error.name != 'triton':  # a triton kernel file: only mcore-bridge's stand-in window imports it
                raise
    for name in _NONE_TE_CLASSES:
        if getattr(te_extension, name, None) is None:
            setattr(te_extension, name, _placeholder(name))
    stand_ins = _stand_ins()
    assert not set(stand_ins) & set(sys.modules), 'a real Transformer Engine / triton is imported'
    sys.modules.update(stand_ins)
    try:
        importlib.import_module('mcore_bridge')
        module = importlib.import_module(TRAINER_MODULE)
    finally:
        for name in stand_ins:
            sys.modules.pop(name, None)
    bound = sorted(f'{name}.{attribute}' for name, loaded in list(sys.modules.items())
                   if name.startswith('megatron.core') and loaded is not None
                   for attribute, value in vars(loaded).items()
                   if isinstance(value, _StandIn) and value.__name__.startswith('transformer_engine'))
    # (triton stand-ins bound by megatron-core's inference kernels are fine: training never calls them.)
    assert not bound, f'megatron-core modules bound the Transformer Engine stand-ins: {bound}'
    return module


def _te_probing_core_modules() -> list[str]:
    """megatron-core's modules whose source imports transformer_engine (read, not imported)."""
    import megatron.core
    root = Path(megatron.core.__file__).parent
    probe = re.compile(r'^\s*(import|from) transformer_engine\b', re.MULTILINE)
    names = []
    for path in sorted(root.rglob('*.py')):
        if probe.search(path.read_text(errors='replace')):
            parts = path.relative_to(root.parent.parent).with_suffix('').parts
            names.append('.'.join(parts[:-1] if parts[-1] == '__init__' else parts))
    return names


@contextlib.contextmanager
def cpu_megatron():
    """megatron-core's CUDA calls answered for CPU, for the duration of the block."""
    from megatron.core import utils as core_utils
    from megatron.core.models.common.embeddings import rotary_pos_embedding
    from megatron.core.tensor_parallel import random as core_random
    saved = []

    def replace(owner, name, value):
        saved.append((owner, name, vars(owner)[name]))
        setattr(owner, name, value)

    def on_cpu(method):
        @functools.wraps(method)
        def run(*args, **kwargs):
            original = torch.cuda.current_device
            torch.cuda.current_device = lambda: 'cpu'
            try:
                return method(*args, **kwargs)
            finally:
                torch.cuda.current_device = original
        return run

    replace(rotary_pos_embedding.RotaryEmbedding, 'get_emb',
            on_cpu(vars(rotary_pos_embedding.RotaryEmbedding)['get_emb']))
    replace(core_utils.GlobalMemoryBuffer, 'get_tensor', on_cpu(vars(core_utils.GlobalMemoryBuffer)['get_tensor']))
    replace(core_random.CudaRNGStatesTracker, 'fork', lambda self, *args, **kwargs: contextlib.nullcontext())
    try:
        yield
    finally:
        for owner, name, value in reversed(saved):
            setattr(owner, name, value)
