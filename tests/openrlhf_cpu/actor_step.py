"""OpenRLHF's own actor training on CPU, for tests only: the real command-line parser (hooked) builds the
arguments, OpenRLHF's ``PolicyModelActor.init_model_from_pretrained`` builds the real ``Actor``, DeepSpeed
engine (ZeRO 0, bf16, gloo) and ``ActorPPOTrainer``, and its ``ppo_train`` runs over a replay buffer of
experiences made by that actor (two epochs: the first pass is on-policy, the second is not).

    python actor_step.py MODEL_DIR OUT_JSON LOSS_TYPE [EXTRA_ARGV...]

What is faked, because a CPU machine lacks it (nothing of the loss, the trainer or DeepSpeed's engine is):
- CUDA calls OpenRLHF makes unconditionally: ``torch.cuda.current_device()`` answers ``'cpu'``,
  ``torch.cuda.synchronize()`` does nothing; its device mesh is built for ``'cpu'`` instead of ``'cuda'``;
  ``LOCAL_RANK=-1`` so that it does not call ``torch.cuda.set_device``; DeepSpeed runs on its CPU accelerator
  (``DS_ACCELERATOR=cpu``, set by the caller);
- the Ray actor around ``PolicyModelActor`` (this process plays it: world size 1), and the rollout: vLLM
  cannot run here, so the experiences are prompts with random completions scored by the actor itself
  (``action_log_probs`` are the actor's, as OpenRLHF's experience maker computes them), and fixed advantages.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import torch
import torch.distributed.device_mesh

os.environ.setdefault('MASTER_ADDR', '127.0.0.1')
os.environ.setdefault('MASTER_PORT', '29533')
os.environ.update({'RANK': '0', 'WORLD_SIZE': '1', 'LOCAL_RANK': '-1'})


class _CPUDevice(str):
    """What ``torch.cuda.current_device()`` answers here: the device string ``'cpu'`` (OpenRLHF moves batches
    and builds tensors on it), except inside an f-string, where it reads ``0``: the replay buffer builds
    ``torch.device(f'cuda:{current_device()}')`` as the target of ``sample()``, which ``ppo_train`` never calls."""

    def __format__(self, spec: str) -> str:
        return format(0, spec)


torch.cuda.current_device = lambda: _CPUDevice('cpu')
torch.cuda.synchronize = lambda *args, **kwargs: None

import openrlhf_cli  # noqa: E402  (tests/openrlhf_cpu)

_init_device_mesh = torch.distributed.device_mesh.init_device_mesh


def _cpu_mesh(device_type: str, *args: Any, **kwargs: Any) -> Any:
    return _init_device_mesh('cpu', *args, **kwargs)


def experiences(actor: Any, tokenizer: Any, count: int, seed: int) -> Any:
    """``count`` samples: a prompt (left-padded) and a random completion (right-padded) of varied length,
    scored by ``actor`` (the old log-probs), with advantages of both signs."""
    from openrlhf.trainer.ppo_utils.experience import Experience
    generator = torch.Generator().manual_seed(seed)
    prompt_length, response_length, vocab = 6, 12, len(tokenizer)
    sequences = torch.randint(5, vocab, (count, prompt_length + response_length), generator=generator)
    attention_mask = torch.ones_like(sequences)
    lengths = torch.randint(4, response_length + 1, (count,), generator=generator)
    action_mask = torch.arange(response_length)[None, :] < lengths[:, None]
    attention_mask[:, prompt_length:] = action_mask.long()
    attention_mask[0, :2] = 0  # a left-padded prompt
    sequences = sequences.masked_fill(attention_mask == 0, tokenizer.pad_token_id)
    with torch.no_grad():
        old = actor(sequences, action_mask, attention_mask=attention_mask)
    rewards = torch.randn(count, generator=generator)
    advantages = (rewards - rewards.mean())[:, None] * action_mask
    return Experience(sequences=sequences, attention_mask=attention_mask, action_mask=action_mask,
                      action_log_probs=old.float(), advantages=advantages.float(), returns=advantages.float(),
                      response_length=lengths.float(), total_length=(lengths + prompt_length).float(),
                      rewards=rewards, info={})


def main() -> None:
    model_dir, out_path, loss_type, *extra = sys.argv[1:]
    openrlhf_cli.set_route('install')
    arguments = openrlhf_cli.run([
        '--actor.model_name_or_path', model_dir, '--reward.remote_url', 'http://localhost:1',
        '--algo.advantage.estimator', 'group_norm', '--algo.kl.init_coef', '0', '--vllm.num_engines', '0',
        '--vllm.sync_backend', 'gloo', '--ds.zero_stage', '0', '--ds.param_dtype', 'bf16',
        '--ds.attn_implementation', 'sdpa', '--actor.num_gpus_per_node', '1', '--actor.adam.lr', '1e-2',
        '--actor.lr_warmup_ratio', '0',
        '--rollout.batch_size', '4', '--rollout.n_samples_per_prompt', '2', '--train.batch_size', '4',
        '--train.micro_batch_size', '2', '--train.max_epochs', '2', '--actor.policy_loss_type', loss_type,
        *extra])
    import openrlhf.utils.deepspeed.deepspeed as ds_module
    from openrlhf.trainer.ray.ppo_actor import PolicyModelActor
    from openrlhf.utils import get_strategy
    ds_module.init_device_mesh = _cpu_mesh
    # get_strategy was replaced by the command-line runner; the real one builds the strategy here.
    import importlib
    strategy = importlib.import_module('openrlhf.utils.utils').get_strategy(arguments)
    del get_strategy
    # The Ray actor's body, in this process (the class under @ray.remote, without BaseDistributedActor's
    # __init__, which asks Ray for GPU ids; its environment variables are set above).
    body = PolicyModelActor.__ray_metadata__.modified_class.__mro__[1]
    worker = body.__new__(body)
    torch.manual_seed(0)
    worker.init_model_from_pretrained(strategy, model_dir, max_steps=8)
    trainer = worker.trainer
    before = {name: parameter.detach().float().clone() for name, parameter in trainer.actor.model.named_parameters()}
    tokenizer = worker.tokenizer
    experience = experiences(trainer.actor, tokenizer, 8, seed=1)
    trainer.replay_buffer.append(experience)

    steps: list[dict[str, Any]] = []
    step = trainer.training_step

    def recording_step(*args: Any, **kwargs: Any) -> Any:
        status = step(*args, **kwargs)
        steps.append({key: (value.float().mean().item() if isinstance(value, torch.Tensor) else value)
                      for key, value in status['metrics'].items()})
        return status

    trainer.training_step = recording_step
    torch.manual_seed(1)  # the replay buffer's shuffle: the same order for every loss type
    status = trainer.ppo_train(0.0)
    changed = sum(not torch.equal(before[name], parameter.detach().float())
                  for name, parameter in trainer.actor.model.named_parameters())
    with open(out_path, 'w') as out:
        json.dump({'steps': steps, 'status': {key: float(value) for key, value in status.items()},
                   'loss_class': type(trainer.actor_loss_fn).__name__,
                   'fipo_config': repr(getattr(trainer.actor_loss_fn, 'fipo_config', None)),
                   'parameters': len(before), 'changed': changed,
                   'param_dtype': str(next(trainer.actor.model.parameters()).dtype)}, out)


if __name__ == '__main__':
    main()
