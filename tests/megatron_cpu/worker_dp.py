"""Test-only worker for two processes (data parallel 2 under gloo): how the trainer reduces fipo/* metrics.

    torchrun --nproc_per_node 2 tests/megatron_cpu/worker_dp.py MODEL_DIR OUT_FILE

Each rank gets its own batch (other tokens, other advantages, other old log-probs). Every rank runs ms-swift's
``forward_step`` + ``loss_func`` twice on it:

* alone: a trainer whose ``_all_reduce_metric`` (ms-swift's own method) reduces over a group of this rank only,
  so its metrics are this rank's own values;
* together: the trainer as built, reducing over the data-parallel group of both ranks.

Rank 0 saves both ranks' values (torch.save); the test asserts that each together-value is the mean, min or max
of the alone-values as ``METRIC_REDUCTIONS`` says.
"""

from __future__ import annotations

import functools
import sys
import traceback
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the megatron_cpu package

from megatron_cpu import harness  # noqa: E402

# Rank 1 has no negative advantage: its neg_adv_ratio_p99 is NaN, which a maximum must ignore.
ADVANTAGES = {0: (1.0, -0.5, 0.25, -1.0), 1: (1.0, 0.5, 0.25, 2.0)}
# Three runs, so that every extra metric appears and disagrees between the ranks: unclipped weights (the ranks'
# extremes differ) with the filter (delta) and the safety rule (it fires on rank 0 only); symmetric clipping
# (the clip fractions); and a rank 1 whose micro-batch holds no completion token (it must add nothing to an
# extreme and 0 to a mean, as ms-swift's own keys do).
CONFIGS = {'unclipped': {'fipo_clip_range': 0.0, 'fipo_safety_threshold': 1.5, 'delta': 1.3},
           'clipped': {'fipo_clip_high_only': False},
           'empty-rank-1': {'fipo_clip_range': 0.0}}
EMPTY_RANK = {'empty-rank-1': 1}

def main(model_dir: Path, out_file: Path) -> None:
    harness.import_trainer_module()
    harness.init_distributed()
    from swift_fipo.integrations.ms_swift.gloo_exit import settle_gloo_workers_at_exit
    settle_gloo_workers_at_exit()  # gloo's worker threads finish before the interpreter is torn down
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    # new_group is collective: every rank creates every one-rank group.
    alone_groups = [torch.distributed.new_group([member], backend='gloo') for member in range(world)]
    mine: dict[str, Any] = {'world': world, 'data_parallel': _data_parallel_size()}
    with harness.cpu_megatron():
        hf = harness.hf_model(model_dir)
        model = harness.gpt_model(hf)
        for name, overrides in CONFIGS.items():
            empty = EMPTY_RANK.get(name) == rank
            tokens = harness.token_batch(hf.config.vocab_size, seed=10 + rank,
                                         completion_lengths=(0,) * 4 if empty else harness.COMPLETION_LENGTHS)
            args = harness.megatron_args(output_dir=str(out_file.parent / f'{out_file.stem}-run-{rank}'), **overrides)
            trainer = harness.new_trainer(args)
            rollout = harness.rollout_logps(trainer, model, tokens)
            noise = torch.randn(rollout.shape, generator=torch.Generator().manual_seed(20 + rank)) * (0.3 + 0.2 * rank)
            batch = harness.grpo_batch(tokens, torch.tensor(ADVANTAGES[rank % 2]), rollout + noise)
            alone = harness.new_trainer(args)
            alone._all_reduce_metric = functools.partial(type(alone)._all_reduce_metric, alone,
                                                         group=alone_groups[rank])
            _, alone_metrics = harness.loss_and_metrics(alone, model, tokens, batch)
            _, together_metrics = harness.loss_and_metrics(trainer, model, tokens, batch)
            mine[name] = {'alone': harness.floats(alone_metrics, 'fipo/'),
                          'together': harness.floats(together_metrics, 'fipo/')}
    gathered: list[Any] = [None] * world
    torch.distributed.all_gather_object(gathered, mine)
    if rank == 0:
        torch.save(gathered, out_file)
    torch.distributed.barrier()


def _data_parallel_size() -> int:
    from megatron.core import parallel_state as mpu
    return mpu.get_data_parallel_world_size()


if __name__ == '__main__':
    try:
        main(Path(sys.argv[1]), Path(sys.argv[2]))
    except BaseException:
        traceback.print_exc()
        raise
