"""Why FIPO refuses a setting, or would do nothing with it: the same reason in the same words on every host
(each host decides whether it refuses at parse time or warns)."""

from __future__ import annotations

__all__ = ['liger_refusal', 'on_policy_reason']


def liger_refusal(host: str, option: str) -> str:
    """Why FIPO refuses a host's fused Liger loss: it has no per-token weights to reweight."""
    return (f'{host}: FIPO does not work with {option}: the Liger kernel computes a fused loss that never '
            f'calls FIPO, so training would silently be the unweighted loss. Turn {option} off.')


def on_policy_reason(num_iterations: int | None, steps_per_generation: int | None,
                     gradient_accumulation_steps: int | None) -> str | None:
    """Why FIPO would be a no-op with this schedule, or None when some rollout is reused off-policy.

    A rollout is generated every ``steps_per_generation * num_iterations`` micro-steps (TRL's and
    ms-swift's schedule; ``steps_per_generation`` defaults to ``gradient_accumulation_steps``). If that
    count divides the accumulation window, every rollout is used up within one optimizer step, by the
    policy that sampled it: log pi_new == log pi_old, Future-KL is 0 and every weight is 1.
    """
    accumulation = gradient_accumulation_steps or 1
    iterations = num_iterations or 1
    steps = steps_per_generation or accumulation
    if accumulation % (steps * iterations) != 0:
        return None
    return (f'FIPO is a no-op here: nothing is reused off-policy (num_iterations={iterations}, '
            f'steps_per_generation={steps}, gradient_accumulation_steps={accumulation}): every rollout is '
            'optimised by the policy that sampled it, so log pi_new == log pi_old, Future-KL is 0, every weight '
            'is 1 and the loss is the unweighted one. Use num_iterations > 1 or steps_per_generation > '
            'gradient_accumulation_steps.')
