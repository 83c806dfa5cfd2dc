"""Side-by-side benchmark: swift-fipo's ``compute_fipo_influence`` vs ms-swift's native
``GRPOTrainer._compute_fipo_influence``, an elementwise floor, memory, and a whole loss step.

    python benchmarks/bench_future_kl.py                 # full run (a few minutes on 2 CPU cores)
    python benchmarks/bench_future_kl.py --device cuda   # the same on a GPU
    python benchmarks/bench_future_kl.py --smoke         # seconds; what CI runs

Everything runs in one process. The installed swift-fipo patches ms-swift's method when ms-swift
imports it; this script re-executes itself with ``SWIFT_FIPO_DISABLE=1`` so the native method is
ms-swift's own code, and refuses to run if it still finds the patch.

Method notes (also in docs/benchmarks.md):
- time: per call, median and interquartile range over ``--repeats`` repeats; a repeat times a loop of
  calls lasting >= ``--min-repeat-ms``; methods are interleaved repeat by repeat so load from other
  processes hits all of them alike. CUDA timings synchronize before and after each repeat.
- native is skipped where its predicted time (quadratic in T from the last measured size) for the
  repeats it would need exceeds ``--native-budget`` seconds.
- CPU memory: the allocator is warmed first (one 32 MiB tensor allocated and freed) so that glibc's
  dynamic mmap threshold is where a training process has it; otherwise every fresh 512 KiB tensor
  is a new mmap whose page faults dominate small kernels.
- peak extra memory: on CPU, the largest total size of tensors allocated by the call's aten ops and
  still alive (a TorchDispatchMode; kernel-internal scratch is not seen); on CUDA,
  ``max_memory_allocated`` minus the memory allocated before the call.
- bytes saved for autograd: the sum of ``numel * element_size`` of every tensor that autograd's
  saved-tensor hooks see while the call runs on a ``log_ratio`` that requires grad.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
import types
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

DISABLE_ENV = 'SWIFT_FIPO_DISABLE'
REPO = Path(__file__).resolve().parents[1]


def _reexec_unpatched() -> None:
    """Restart this interpreter with the swift-fipo hook disabled (the .pth runs at start-up)."""
    if os.environ.get(DISABLE_ENV) != '1':
        env = {**os.environ, DISABLE_ENV: '1'}
        os.execve(sys.executable, [sys.executable, *sys.argv], env)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--device', default='cpu', help='cpu or cuda')
    parser.add_argument('--batches', type=int, nargs='+', default=[1, 8])
    parser.add_argument('--lengths', type=int, nargs='+', default=[512, 2048, 8192, 16384, 32768])
    parser.add_argument('--dtypes', nargs='+', default=['float32', 'bfloat16'])
    parser.add_argument('--repeats', type=int, default=15)
    parser.add_argument('--min-repeat-ms', type=float, default=5.0)
    parser.add_argument('--native-budget', type=float, default=6.0,
                        help='seconds one native timing may take (all its repeats); larger sizes are skipped')
    parser.add_argument('--loss-length', type=int, default=16384)
    parser.add_argument('--loss-batch', type=int, default=8)
    parser.add_argument('--threads', type=int, default=None, help='torch.set_num_threads (default: torch default)')
    parser.add_argument('--out-dir', type=Path, default=REPO / 'benchmarks' / 'results')
    parser.add_argument('--plot', type=Path, default=REPO / 'docs' / 'benchmarks_time_vs_T.png')
    parser.add_argument('--tag', default=None, help='results file name (default: the device)')
    parser.add_argument('--smoke', action='store_true', help='tiny sizes, 2 repeats: a seconds-long check')
    args = parser.parse_args(argv)
    if args.smoke:
        args.batches, args.lengths, args.dtypes = [1, 2], [64, 300], ['float32', 'bfloat16']
        args.repeats, args.min_repeat_ms, args.native_budget = 2, 0.5, 2.0
        args.loss_length, args.loss_batch = 256, 2
    return args


# --- inputs and the functions under test ------------------------------------------------------------


def make_inputs(torch, batch: int, length: int, dtype, device, seed: int = 0) -> dict[str, Any]:
    """Off-policy-looking inputs: small log-ratios, right-padded rows with holes, [B, T] advantages
    (constant per row, materialized as ms-swift 4.4+ passes them), coef_1 = exp(log_ratio)."""
    generator = torch.Generator().manual_seed(seed)
    log_ratio = (torch.randn(batch, length, generator=generator) * 0.05)
    lengths = torch.randint(length // 2, length + 1, (batch,), generator=generator)
    mask = (torch.arange(length)[None, :] < lengths[:, None]) & (torch.rand(batch, length, generator=generator) > 0.02)
    advantages = torch.randn(batch, 1, generator=generator).expand(batch, length).clone()
    log_ratio = log_ratio.to(device=device, dtype=dtype)
    return {
        'log_ratio': log_ratio,
        'mask': mask.to(device),
        'advantages': advantages.to(device=device, dtype=dtype),
        'coef_1': torch.exp(log_ratio),
    }


def native_method():
    """ms-swift's own ``_compute_fipo_influence``, asserted unpatched."""
    from swift.rlhf_trainers.grpo_trainer import GRPOTrainer
    method = GRPOTrainer.__dict__['_compute_fipo_influence']
    if getattr(method, '__swift_fipo_original__', None) is not None:  # a swift-fipo patch remembers its original
        raise SystemExit(f"ms-swift's _compute_fipo_influence is patched by swift-fipo although {DISABLE_ENV}=1; "
                         'refusing to benchmark the plugin against itself.')
    trainer = types.SimpleNamespace(args=types.SimpleNamespace(delta=None), fipo_gamma=2**(-1 / 32),
                                    fipo_clip_range=0.2, fipo_clip_high_only=True, fipo_safety_threshold=4.0)
    return lambda log_ratio, coef_1, advantages, mask: method(trainer, log_ratio, coef_1, advantages, mask)


# --- measurement ----------------------------------------------------------------------------------


class Timer:
    def __init__(self, torch, device: str, min_repeat_s: float):
        self.torch, self.cuda, self.min_repeat_s = torch, device.startswith('cuda'), min_repeat_s

    def sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()

    def once(self, fn: Callable[[], Any]) -> float:
        self.sync()
        start = time.perf_counter()
        fn()
        self.sync()
        return time.perf_counter() - start

    def calibrate(self, fn: Callable[[], Any]) -> tuple[int, float]:
        """Warm up; return (calls per repeat, seconds of one call)."""
        first = self.once(fn)
        single = min(first, self.once(fn))
        return max(1, math.ceil(self.min_repeat_s / max(single, 1e-7))), single

    def repeat(self, fn: Callable[[], Any], calls: int) -> float:
        self.sync()
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        self.sync()
        return (time.perf_counter() - start) / calls


def summarize(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    quartiles = statistics.quantiles(ordered, n=4, method='inclusive') if len(ordered) > 1 else [ordered[0]] * 3
    return {'median_ms': statistics.median(ordered) * 1e3, 'q1_ms': quartiles[0] * 1e3, 'q3_ms': quartiles[2] * 1e3,
            'min_ms': ordered[0] * 1e3, 'repeats': len(ordered)}


def time_methods(timer: Timer, methods: dict[str, Callable[[], Any]], repeats: int,
                 budgets: dict[str, int]) -> dict[str, dict[str, float]]:
    """Interleaved repeats; ``budgets[name]`` caps the repeats of a slow method."""
    plan = {name: timer.calibrate(fn)[0] for name, fn in methods.items()}
    samples: dict[str, list[float]] = {name: [] for name in methods}
    for index in range(repeats):
        for name, fn in methods.items():
            if index < budgets.get(name, repeats):
                samples[name].append(timer.repeat(fn, plan[name]))
    return {name: summarize(values) for name, values in samples.items()}


def saved_for_backward_bytes(torch, fn: Callable[[], Any]) -> int:
    saved = 0

    def pack(tensor):
        nonlocal saved
        saved += tensor.numel() * tensor.element_size()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        result = fn()
    del result
    return saved


def peak_extra_bytes(torch, device: str, fn: Callable[[], Any]) -> int:
    if device.startswith('cuda'):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        result = fn()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - before
        del result
        return peak
    tracker = _allocation_tracker(torch)()
    with tracker:
        result = fn()
    del result
    return tracker.peak


def _allocation_tracker(torch):
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_leaves

    class AllocationTracker(TorchDispatchMode):
        """Live bytes of tensors that aten ops allocate (views and in-place results excluded)."""

        def __init__(self):
            super().__init__()
            self.live = self.peak = 0

        def _free(self, size: int) -> None:
            self.live -= size

        def __torch_dispatch__(self, func, types_, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            inputs = {t.untyped_storage().data_ptr() for t in tree_leaves((args, kwargs))
                      if isinstance(t, torch.Tensor)}
            for tensor in tree_leaves(out):
                if not isinstance(tensor, torch.Tensor) or tensor._is_view():
                    continue
                storage = tensor.untyped_storage()
                if storage.data_ptr() in inputs or storage.nbytes() == 0:
                    continue
                size = storage.nbytes()
                self.live += size
                self.peak = max(self.peak, self.live)
                weakref.finalize(tensor, self._free, size)
            return out

    return AllocationTracker


# --- the loss step --------------------------------------------------------------------------------


def loss_step(torch, inputs: dict[str, Any], weight_fn: Callable | None) -> Callable[[], Any]:
    """ms-swift's token-level clipped objective (DAPO normalization) over [B, T] log-probs, forward and
    backward, optionally multiplied by a FIPO weight computed from the same log-ratio."""
    old_logps = inputs['log_ratio'].float() * 0 - 2.0
    new_logps = (old_logps + inputs['log_ratio'].float()).to(inputs['log_ratio'].dtype)
    mask, advantages = inputs['mask'], inputs['advantages']

    def step():
        logps = new_logps.detach().requires_grad_(True)
        log_ratio = logps - old_logps
        coef_1 = torch.exp(log_ratio)
        weight = weight_fn(log_ratio, coef_1, advantages, mask) if weight_fn is not None else None
        coef_2 = torch.clamp(coef_1, 1 - 0.2, 1 + 0.28)
        per_token_loss = -torch.min(coef_1 * advantages, coef_2 * advantages)
        if weight is not None:
            per_token_loss = per_token_loss * weight
        loss = (per_token_loss * mask).sum() / mask.sum().clamp(min=1.0)
        loss.backward()
        return logps.grad

    return step


# --- main ---------------------------------------------------------------------------------------------


def machine(torch, device: str) -> dict[str, Any]:
    info = {'python': platform.python_version(), 'torch': torch.__version__, 'threads': torch.get_num_threads(),
            'device': device, 'platform': platform.platform()}
    try:
        import swift
        info['ms_swift'] = getattr(swift, '__version__', 'unknown')
    except Exception:  # pragma: no cover - informative only
        pass
    try:
        lscpu = subprocess.run(['lscpu'], capture_output=True, text=True, check=False).stdout
        info['cpu'] = next((line.split(':', 1)[1].strip() for line in lscpu.splitlines()
                            if line.startswith('Model name')), platform.processor())
    except OSError:
        info['cpu'] = platform.processor()
    info['cpu_count'] = os.cpu_count()
    info['loadavg_start'] = os.getloadavg()
    if device.startswith('cuda'):
        info['gpu'] = torch.cuda.get_device_name()
    return info


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from swift_fipo.ops.influence import compute_fipo_influence

    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device
    if device == 'cpu':
        torch.empty(8 << 20).zero_()  # 32 MiB: raises glibc's mmap threshold, as in any training process
    native = native_method()
    timer = Timer(torch, device, args.min_repeat_ms / 1e3)

    def plugin(log_ratio, coef_1, advantages, mask):
        return compute_fipo_influence(log_ratio, mask, advantages, ratio=coef_1)[0]

    def native_weight(log_ratio, coef_1, advantages, mask):
        return native(log_ratio, coef_1, advantages, mask)[0]

    results: dict[str, Any] = {'machine': machine(torch, device), 'args': {k: str(v) for k, v in vars(args).items()},
                               'influence': [], 'loss_step': {}}
    for dtype_name in args.dtypes:
        dtype = getattr(torch, dtype_name)
        for batch in args.batches:
            native_single: tuple[int, float] | None = None  # (T, seconds) of the last native call
            for length in args.lengths:
                data = make_inputs(torch, batch, length, dtype, device)
                x, m, a, r = data['log_ratio'], data['mask'], data['advantages'], data['coef_1']
                methods = {
                    'plugin': lambda: plugin(x, r, a, m),
                    'floor': lambda: torch.where(m, torch.exp(x).clamp(0.8, 1.2), 0),
                    'exp': lambda: torch.exp(x),
                    'scan': lambda: _scan(torch, x),
                }
                budgets: dict[str, int] = {}
                row: dict[str, Any] = {'dtype': dtype_name, 'B': batch, 'T': length}
                predicted = None if native_single is None else native_single[1] * (length / native_single[0])**2
                if predicted is None or predicted * 2 <= args.native_budget:  # two warm-up calls, then repeats
                    # The fastest of 3 calls: one call disturbed by another process must not skip sizes.
                    repeats = 3 if length <= 4096 else 1
                    single = min(timer.once(lambda: native_weight(x, r, a, m)) for _ in range(repeats))
                    native_single = (length, single)
                    budgets['native'] = max(1, min(args.repeats, int(args.native_budget / max(single, 1e-7) / 2)))
                    methods['native'] = lambda: native_weight(x, r, a, m)
                else:
                    row['native_skipped'] = f'predicted {predicted:.1f} s per call'
                row['time'] = time_methods(timer, methods, args.repeats, budgets)
                row['plugin_saved_bytes'] = saved_for_backward_bytes(
                    torch, lambda: plugin(x.detach().requires_grad_(True), r, a, m))
                row['plugin_peak_bytes'] = peak_extra_bytes(torch, device, lambda: plugin(x, r, a, m))
                if 'native' in methods:
                    row['native_saved_bytes'] = saved_for_backward_bytes(
                        torch, lambda: native_weight(x.detach().requires_grad_(True), r, a, m))
                    row['native_peak_bytes'] = peak_extra_bytes(torch, device, lambda: native_weight(x, r, a, m))
                results['influence'].append(row)
                print(_row_line(row), flush=True)

    data = make_inputs(torch, args.loss_batch, args.loss_length, torch.float32, device)
    steps = {'no FIPO': loss_step(torch, data, None), 'plugin FIPO': loss_step(torch, data, plugin),
             'native FIPO': loss_step(torch, data, native_weight)}
    native_step = timer.once(steps['native FIPO'])
    budgets = {'native FIPO': max(1, min(args.repeats, int(args.native_budget / max(native_step, 1e-7) / 2)))}
    results['loss_step'] = {'B': args.loss_batch, 'T': args.loss_length, 'dtype': 'float32',
                            'time': time_methods(timer, steps, args.repeats, budgets)}
    print('loss step', json.dumps(results['loss_step']['time']), flush=True)
    results['machine']['loadavg_end'] = os.getloadavg()
    return results


def _scan(torch, x):
    from swift_fipo.ops.future_kl import discounted_future_sum
    return discounted_future_sum(x.float(), 2**(-1 / 32))


def _row_line(row: dict[str, Any]) -> str:
    times = ' '.join(f'{name}={value["median_ms"]:.3f}ms' for name, value in row['time'].items())
    return f'{row["dtype"]:8s} B={row["B"]:<2d} T={row["T"]:<6d} {times} {row.get("native_skipped", "")}'


# --- reporting ------------------------------------------------------------------------------------


def _ms(stats: dict[str, float] | None) -> str:
    if stats is None:
        return 'skipped'
    return f'{stats["median_ms"]:.3f} ({stats["q1_ms"]:.3f}-{stats["q3_ms"]:.3f})'


def _mib(value: int | None) -> str:
    return '-' if value is None else f'{value / 2**20:.2f}'


def markdown(results: dict[str, Any]) -> str:
    lines = ['| dtype | B | T | plugin ms | native ms | speed-up | floor ms | plugin / floor | exp ms | scan ms |',
             '|---|---|---|---|---|---|---|---|---|---|']
    for row in results['influence']:
        times = row['time']
        plugin, floor, native = times['plugin'], times['floor'], times.get('native')
        speedup = f'{native["median_ms"] / plugin["median_ms"]:.0f}x' if native else 'skipped'
        lines.append(f'| {row["dtype"]} | {row["B"]} | {row["T"]} | {_ms(plugin)} | '
                     f'{_ms(native) if native else "skipped (" + row["native_skipped"] + ")"} | {speedup} | '
                     f'{_ms(floor)} | {plugin["median_ms"] / floor["median_ms"]:.1f}x | {_ms(times["exp"])} | '
                     f'{_ms(times["scan"])} |')
    lines += ['', '| dtype | B | T | plugin peak extra MiB | plugin saved for autograd (bytes) | '
              'native peak extra MiB | native saved for autograd MiB | T^2 * 4 bytes, MiB |',
              '|---|---|---|---|---|---|---|---|']
    for row in results['influence']:
        native_saved = row.get('native_saved_bytes')
        lines.append(f'| {row["dtype"]} | {row["B"]} | {row["T"]} | {_mib(row["plugin_peak_bytes"])} | '
                     f'{row["plugin_saved_bytes"]} | {_mib(row.get("native_peak_bytes"))} | {_mib(native_saved)} | '
                     f'{_mib(row["T"] ** 2 * 4)} |')
    loss = results['loss_step']
    base = loss['time']['no FIPO']['median_ms']
    lines += ['', f'Loss step, B={loss["B"]}, T={loss["T"]}, {loss["dtype"]}, forward + backward:', '',
              '| variant | ms | vs no FIPO |', '|---|---|---|']
    for name, stats in loss['time'].items():
        lines.append(f'| {name} | {_ms(stats)} | {stats["median_ms"] / base:.2f}x |')
    return '\n'.join(lines) + '\n'


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    dtypes = sorted({row['dtype'] for row in results['influence']})
    figure, axes = plt.subplots(1, len(dtypes), figsize=(6 * len(dtypes), 4.5), squeeze=False)
    for axis, dtype in zip(axes[0], dtypes, strict=False):
        for batch in sorted({row['B'] for row in results['influence']}):
            rows = [row for row in results['influence'] if row['dtype'] == dtype and row['B'] == batch]
            lengths = [row['T'] for row in rows]
            for name, style in (('native', 'o-'), ('plugin', 's-'), ('floor', '^--')):
                points = [(row['T'], row['time'][name]['median_ms']) for row in rows if name in row['time']]
                if points:
                    axis.plot(*zip(*points, strict=False), style, label=f'{name} B={batch}')
            axis.set_xticks(lengths, [str(length) for length in lengths])
        axis.set_xscale('log')
        axis.set_yscale('log')
        axis.set_xlabel('T (tokens)')
        axis.set_ylabel('ms per call (median)')
        axis.set_title(f'{dtype} inputs, {results["machine"]["device"]}, {results["machine"]["threads"]} threads')
        axis.grid(True, which='both', alpha=0.3)
        axis.legend(fontsize=7)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main(argv: list[str] | None = None) -> None:
    _reexec_unpatched()
    args = parse_args(argv)
    started = time.time()
    results = run(args)
    results['wall_s'] = time.time() - started
    tag = args.tag or ('smoke' if args.smoke else args.device.split(':')[0])
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / f'{tag}.json').write_text(json.dumps(results, indent=1))
    (args.out_dir / f'{tag}.md').write_text(markdown(results))
    plot(results, args.plot)
    print(markdown(results))
    print(f'wrote {args.out_dir / (tag + ".json")}, {args.out_dir / (tag + ".md")}, {args.plot} '
          f'in {results["wall_s"]:.0f} s')


if __name__ == '__main__':
    main()
