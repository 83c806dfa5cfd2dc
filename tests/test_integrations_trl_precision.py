"""TRL's GRPOTrainer with ``bf16=True`` on CPU: transformers' CPU AMP computes the loss, FIPO's weights
included, under ``torch.autocast('cpu', bfloat16)``. That crashed at the first loss before the maths
turned autocast off for itself; now it trains, on the trainer's own code path."""

from __future__ import annotations

import inspect
import math
from pathlib import Path
from typing import Any

import torch
import transformers.trainer
from test_integrations_trl import FIPOGRPOTrainer, grpo_args, make_trainer, model_dir  # noqa: F401 (fixture)

# transformers 4.x's Trainer runs compute_loss under CPU autocast when bf16 is on (its use_cpu_amp);
# transformers 5 leaves autocast to accelerate, around the model's forward only.
CPU_AMP_AROUND_THE_LOSS = 'self.use_cpu_amp = True' in inspect.getsource(transformers.trainer)


class AutocastRecordingTrainer(FIPOGRPOTrainer):
    """Records, per loss call, whether autocast was on and the FIPO weights of the completion tokens."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.records: list[dict[str, Any]] = []

    def _compute_loss(self, model: Any, inputs: dict[str, Any]) -> torch.Tensor:
        loss = super()._compute_loss(model, inputs)
        stats = self.last_fipo_stats
        self.records.append({'autocast': torch.is_autocast_enabled('cpu'), 'loss': loss.detach().float(),
                             'weight': stats.weight[stats.completion_mask], 'future_kl': stats.future_kl})
        return loss


# noqa below: model_dir is the fixture imported from test_integrations_trl, which pytest passes by name.
def test_bf16_training_computes_float32_weights_under_autocast(model_dir: Path, tmp_path: Path) -> None:  # noqa: F811
    trainer = make_trainer(model_dir, grpo_args(tmp_path, bf16=True), cls=AutocastRecordingTrainer)
    trainer.train()
    records = trainer.records
    assert len(records) == 4
    # Where the precision policy surrounds the loss, it really did (else the test would prove nothing).
    assert all(record['autocast'] for record in records) == CPU_AMP_AROUND_THE_LOSS
    for index, record in enumerate(records):
        assert record['future_kl'].dtype == torch.float32 and torch.isfinite(record['loss'])
        if index % 2 == 0:  # num_iterations=2: the first pass over each rollout is on-policy
            assert torch.equal(record['weight'], torch.ones_like(record['weight']))
        else:
            assert record['weight'].max() > 1.0 and record['weight'].min() >= 1.0
    logs = [entry for entry in trainer.state.log_history if 'loss' in entry]
    assert len(logs) == 4 and all(math.isfinite(entry['fipo/influence_weight_mean']) for entry in logs)
    assert logs[1]['fipo/influence_weight_mean'] > 1.0
