"""Test-only worker (one process, world size 1): ms-swift's real MegatronGRPOTrainer on megatron-core tensors.

    python tests/megatron_cpu/worker_single.py MODEL_DIR OUT_FILE

Run twice by tests/test_integrations_megatron_real.py: once as installed (the swift-fipo .pth hook patches the
class on import) and once with SWIFT_FIPO_DISABLE=1 (ms-swift as shipped). It measures and saves
(torch.save) what the test then asserts: nothing is judged here, except that a step which should run does.
"""

from __future__ import annotations

import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the megatron_cpu package

from megatron_cpu import harness  # noqa: E402

ADVANTAGES = (1.0, -0.5, 0.25, -1.0)
# The flag sets the loss comparison covers (ms-swift argument names): what each exercises is asserted by the
# test from the metrics (a filter that filtered, a safety rule that fired).
CASES: dict[str, dict[str, Any]] = {
    'defaults': {},
    'symmetric-clip': {'fipo_clip_high_only': False},
    'delta': {'delta': 1.5},
    'safety-fires': {'fipo_safety_threshold': 1.05},
    'sequence-is': {'importance_sampling_level': 'sequence'},
}
OPTIMIZER_STEPS = 3


def _error_of(call: Callable[[], Any]) -> str | None:
    try:
        call()
    except Exception as error:  # noqa: BLE001  (the test reads the message)
        return f'{type(error).__name__}: {error}'
    return None


def main(model_dir: Path, out_file: Path) -> None:
    began = time.monotonic()
    module = harness.import_trainer_module()
    cls = module.MegatronGRPOTrainer
    from swift_fipo import activation
    from swift_fipo.integrations.ms_swift import hooks as ms_swift
    from swift_fipo.integrations.patches import is_patch
    result: dict[str, Any] = {'import_s': time.monotonic() - began, 'disabled': activation.is_disabled(),
                              'patched': ms_swift.is_patched(cls), 'teacher_patched': is_patch(cls._setup_teacher),
                              'loss_func_patched': is_patch(cls.loss_func)}
    result['doctor'] = _doctor()
    harness.init_distributed()
    out_dir = out_file.parent / f'{out_file.stem}-run'

    def args(**overrides: Any) -> Any:
        return harness.megatron_args(output_dir=str(out_dir), **overrides)

    with harness.cpu_megatron():
        hf = harness.hf_model(model_dir)
        model = harness.gpt_model(hf)
        tokens = harness.token_batch(hf.config.vocab_size, seed=0)
        # [B, S]: each row's own tokens (a padding position may not attend to itself); padding is not compared.
        real = ~tokens['attention_mask'][:, 0].diagonal(dim1=-2, dim2=-1)
        with torch.no_grad():  # the same weights: Megatron's logits against HF's, on the rows' own tokens
            hf_logits = hf(input_ids=tokens['input_ids'], attention_mask=real.long()).logits
            logits = model(input_ids=tokens['input_ids'], position_ids=tokens['position_ids'],
                           attention_mask=tokens['attention_mask'])
        result['logits_max_abs_diff'] = float((logits - hf_logits)[real].abs().max())
        result['logits_max_abs'] = float(hf_logits[real].abs().max())

        probe = harness.new_trainer(args())
        result['has_teacher'] = bool(probe._has_teacher)
        rollout = harness.rollout_logps(probe, model, tokens)
        # Old log-probs off the current policy (a reused rollout): FIPO's weights move off 1.
        noise = torch.randn(rollout.shape, generator=torch.Generator().manual_seed(1)) * 0.3
        advantages = torch.tensor(ADVANTAGES)

        def batch() -> Any:
            return harness.grpo_batch(tokens, advantages, rollout + noise)

        def run(trainer: Any, old: Any = None) -> tuple[torch.Tensor, dict[str, Any]]:
            model.zero_grad(set_to_none=True)
            loss, metrics = harness.loss_and_metrics(trainer, model, tokens, batch() if old is None else old)
            loss.backward()
            return loss, metrics

        # As configured: ms-swift's own teacher set-up decides (the OPD-RL check).
        result['default_error'] = _error_of(lambda: run(harness.new_trainer(args())))
        result['explicit_teacher_error'] = _error_of(lambda: run(harness.new_trainer(args(
            teacher_model=str(model_dir)))))

        cases = {}
        for name, overrides in CASES.items():
            trainer = harness.new_trainer(args(**overrides))
            teacher_flag = bool(trainer._has_teacher)
            trainer._has_teacher = False  # what the plugin's _setup_teacher does; native needs it by hand
            loss, metrics = run(trainer)
            cases[name] = {'loss': loss.detach().clone(), 'grads': harness.gradients(model),
                           'metrics': harness.floats(metrics), 'teacher_flag': teacher_flag}
        result['cases'] = cases

        if not result['disabled']:
            # The same loss_func fed HF's log-probs for the same rows (forward_step's frame: labels rolled).
            trainer = harness.new_trainer(args())
            rolled = torch.roll(tokens['labels'], -1, dims=-1)
            with torch.no_grad():
                hf_logps = torch.log_softmax(hf_logits / trainer.temperature, -1).gather(
                    -1, rolled.clamp(min=0).unsqueeze(-1)).squeeze(-1) * (rolled != -100)
            hf_loss, _ = trainer.loss_func(hf_logps, data={'grpo_batch': batch()})
            result['hf_logps_loss'] = float(hf_loss)
            result['megatron_loss'] = float(cases['defaults']['loss'])
            result['steps'] = _optimizer_steps(model_dir, args)
            result['presets'] = _presets(run, tokens, rollout, advantages, args)
    result['wall_s'] = time.monotonic() - began
    torch.save(result, out_file)


def _presets(run: Callable[..., Any], tokens: dict[str, torch.Tensor], rollout: torch.Tensor,
             advantages: torch.Tensor, args: Callable[..., Any]) -> dict[str, dict[str, Any]]:
    """The paper presets on the real loss: what the trainer's ``_compute_fipo_influence`` received and returned
    (an instance attribute that calls the class's own method records it), for the test to hold against the
    float64 reference. The settings reach the trainer as the argument hook hands them over: the resolved
    ``RunSettings`` attached to the args, and the flags ms-swift knows (``--delta``, ``--fipo_*``) set on them."""
    import dataclasses

    from swift_fipo.config import PRESETS
    from swift_fipo.integrations.settings import RunSettings, attach_settings
    # Far off-policy old log-probs, so that the authors' filter (c = 10), safety rule and drop have work to do.
    noise = torch.randn(rollout.shape, generator=torch.Generator().manual_seed(3)) * 1.5
    results = {}
    for name in ('paper-7b', 'paper-32b'):
        config = PRESETS[name]
        trainer = harness.new_trainer(args(delta=config.delta, fipo_decay_rate=config.decay_rate,
                                           fipo_clip_range=config.clip_range, fipo_clip_high_only=config.clip_high_only,
                                           fipo_safety_threshold=config.safety_threshold))
        attach_settings(trainer.args, RunSettings(config=config))
        seen: dict[str, Any] = {}
        method = type(trainer)._compute_fipo_influence

        def record(log_ratio, coef_1, advantages, completion_mask, _trainer=trainer, _method=method, _seen=seen):
            weight, returned = _method(_trainer, log_ratio, coef_1, advantages, completion_mask)
            _seen.update(log_ratio=log_ratio.detach().clone(), coef_1=coef_1.detach().clone(),
                         advantages=advantages.detach().clone(), mask=completion_mask.clone(),
                         weight=weight.detach().clone())
            return weight, returned

        trainer._compute_fipo_influence = record
        batch = harness.grpo_batch(tokens, advantages, rollout + noise)
        # Two tokens of a negative-advantage row with ratio e^3 > c = 10: the authors' sequence drop binds.
        row = int(torch.nonzero(advantages < 0)[-1])
        columns = torch.nonzero(batch.completion_mask[row])[:2, 0]
        batch.old_per_token_logps[row, columns] = rollout[row, columns] - 3.0
        loss, metrics = run(trainer, batch)
        results[name] = {**seen, 'loss': float(loss.detach()), 'metrics': harness.floats(metrics, 'fipo/'),
                         'config': dataclasses.asdict(config)}
    return results


def _doctor() -> dict[str, Any]:
    """What ``swift-fipo doctor`` prints in this process (its public function, stdout captured)."""
    import contextlib
    import io

    from swift_fipo import cli
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = cli.doctor()
    return {'rc': code, 'text': printed.getvalue()}


def _optimizer_steps(model_dir: Path, args: Callable[..., Any]) -> list[dict[str, float]]:
    """Several optimizer steps on one rollout (``steps_per_generation > 1``): old log-probs from the model at
    rollout time, then forward_step + loss_func + backward + step, OPTIMIZER_STEPS times. torch's Adam stands in
    for Megatron's distributed optimizer (it needs CUDA buffers); the loss and gradients are ms-swift's."""
    hf = harness.hf_model(model_dir)
    model = harness.gpt_model(hf)
    tokens = harness.token_batch(hf.config.vocab_size, seed=2)
    trainer = harness.new_trainer(args())
    rollout = harness.rollout_logps(trainer, model, tokens)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    steps = []
    for _ in range(OPTIMIZER_STEPS):
        optimizer.zero_grad(set_to_none=True)
        loss, metrics = harness.loss_and_metrics(trainer, model, tokens,
                                                 harness.grpo_batch(tokens, torch.tensor(ADVANTAGES), rollout))
        loss.backward()
        optimizer.step()
        steps.append(harness.floats(metrics, 'fipo/'))
    return steps


if __name__ == '__main__':
    try:
        main(Path(sys.argv[1]), Path(sys.argv[2]))
    except BaseException:
        traceback.print_exc()
        raise
