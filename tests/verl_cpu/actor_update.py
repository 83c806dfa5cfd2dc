"""One GRPO update through upstream verl's own actor worker, on CPU (run by tests/test_verl_worker.py).

    python actor_update.py SPEC.json OUT.json

SPEC names the loss mode, the precision ("bf16": verl's default FSDP mixed precision, whose engine runs
forward and loss under torch.autocast; "fp32": no autocast), epochs, mini-batch size, learning rate
and FIPO options. The script builds the tiny Qwen2 model, samples a rollout with HF ``generate`` (verl
0.9.1 registers no HF rollout, so the rollout is the one stand-in here), scores it with a rule,
and then does what ``RayPPOTrainer`` does, with verl's own code: ``ActorRolloutRefWorker(role='actor')``
from verl's composed ``ppo_trainer`` config, ``compute_log_prob`` for the old log-probs, verl's
``compute_advantage`` (GRPO) and ``update_actor`` with the metadata ``RayPPOTrainer._update_actor``
sets. OUT receives the worker's metrics, what changed in the parameters and the wall times.

The environment must select the CPU platform (tests/verl_cpu/cpu_platform.py): VERL_USE_EXTERNAL_MODULES,
VERL_PLATFORM=cpu, VERL_ENGINE_DEVICE=cuda (verl registers its FSDP engine for cuda and npu only).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

TESTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TESTS))

from tiny_trl_model import PROMPTS, build_tiny_model  # noqa: E402

ROLLOUT_N = 4
MAX_RESPONSE = 10
PROMPT_LENGTH = 16
# The rule reward: the share of the words 'a' and 'the' in the response, so GRPO groups get spread
# advantages (a random tiny model rarely gives a whole group the same score).
REWARDED_WORDS = ('a', 'the')


def compose_config(model_path: Path, spec: dict[str, Any]):
    from hydra import compose, initialize_config_dir
    from verl.trainer.ppo import core_algos

    config_dir = str(Path(core_algos.__file__).resolve().parents[1] / 'config')
    batch_size = len(PROMPTS) * ROLLOUT_N
    prefix = 'actor_rollout_ref'
    overrides = [
        f'{prefix}.model.path={model_path}',
        f'{prefix}.model.use_remove_padding=True',
        f'{prefix}.model.enable_gradient_checkpointing=False',
        f'+{prefix}.model.override_config.attn_implementation=sdpa',
        f'{prefix}.actor.strategy=fsdp2',
        f'{prefix}.actor.use_torch_compile=False',
        f'{prefix}.actor.fsdp_config.use_torch_compile=False',
        f'{prefix}.actor.policy_loss.loss_mode={spec["loss_mode"]}',
        # verl's rollout mini-batch counts prompts: x rollout.n responses per mini-batch
        f'{prefix}.actor.ppo_mini_batch_size={spec["mini_batch_responses"] // ROLLOUT_N}',
        f'{prefix}.actor.ppo_micro_batch_size_per_gpu=4',
        f'{prefix}.actor.ppo_epochs={spec["ppo_epochs"]}',
        f'{prefix}.actor.optim.lr={spec["lr"]}',
        f'{prefix}.actor.optim.weight_decay=0',
        f'{prefix}.rollout.n={ROLLOUT_N}',
        f'{prefix}.rollout.name=hf',
        f'{prefix}.rollout.log_prob_micro_batch_size_per_gpu=4',
        f'data.train_batch_size={batch_size // ROLLOUT_N}',
        'algorithm.adv_estimator=grpo',
        'trainer.n_gpus_per_node=1',
        'trainer.nnodes=1',
    ]
    if spec['precision'] == 'fp32':  # verl skips its autocast for a float32 param dtype
        overrides.append(f'+{prefix}.actor.fsdp_config.mixed_precision.param_dtype=fp32')
    for key, value in spec.get('fipo', {}).items():
        overrides.append(f'+{prefix}.actor.policy_loss.fipo.{key}={value}')
    with initialize_config_dir(config_dir=config_dir, version_base=None):
        return compose('ppo_trainer', overrides=overrides)


def rollout(model_path: Path, seed: int):
    """Sample ROLLOUT_N responses per prompt with HF generate; left-padded prompts, right-padded responses."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path, torch_dtype=torch.float32)
    tokenizer.padding_side = 'left'
    texts = [tokenizer.apply_chat_template([{'role': 'user', 'content': prompt}], tokenize=False,
                                           add_generation_prompt=True) for prompt in PROMPTS]
    encoded = tokenizer(texts, return_tensors='pt', padding='max_length', max_length=PROMPT_LENGTH)
    prompts = encoded['input_ids'].repeat_interleave(ROLLOUT_N, dim=0)
    prompt_mask = encoded['attention_mask'].repeat_interleave(ROLLOUT_N, dim=0)
    torch.manual_seed(seed)
    with torch.no_grad():
        generated = model.generate(input_ids=prompts, attention_mask=prompt_mask, do_sample=True,
                                   max_new_tokens=MAX_RESPONSE, min_new_tokens=2, top_k=0, top_p=1.0)
    responses = generated[:, PROMPT_LENGTH:]
    responses = torch.nn.functional.pad(responses, (0, MAX_RESPONSE - responses.shape[1]),
                                        value=tokenizer.pad_token_id)
    # A response runs up to and including its first end token.
    is_end = responses == tokenizer.eos_token_id
    ended_before = (is_end.cumsum(dim=1) - is_end.long()) > 0
    response_mask = (~ended_before & (responses != tokenizer.pad_token_id)).long()
    words = [tokenizer.convert_ids_to_tokens(row[mask.bool()].tolist())
             for row, mask in zip(responses, response_mask, strict=True)]
    scores = torch.tensor([sum(word in REWARDED_WORDS for word in row) / max(len(row), 1) for row in words])
    return prompts, prompt_mask, responses, response_mask, scores


def build_batch(prompts, prompt_mask, responses, response_mask, scores):
    from verl import DataProto

    attention_mask = torch.cat([prompt_mask, response_mask], dim=1)
    position_ids = (attention_mask.cumsum(dim=1) - 1).clamp(min=0)
    lengths = response_mask.sum(dim=1)
    token_level_rewards = torch.zeros(responses.shape, dtype=torch.float32)
    token_level_rewards[torch.arange(len(scores)), (lengths - 1).clamp(min=0)] = scores
    uid = np.array([str(index // ROLLOUT_N) for index in range(len(scores))], dtype=object)
    return DataProto.from_dict(
        tensors={'prompts': prompts, 'responses': responses, 'input_ids': torch.cat([prompts, responses], dim=1),
                 'attention_mask': attention_mask, 'position_ids': position_ids, 'response_mask': response_mask,
                 'token_level_scores': token_level_rewards.clone(), 'token_level_rewards': token_level_rewards},
        non_tensors={'uid': uid})


def old_log_probs(worker, batch, config):
    """RayPPOTrainer._compute_old_log_prob, with verl's own conversions."""
    from verl import DataProto
    from verl.utils import tensordict_utils as tu
    from verl.workers.utils.padding import left_right_2_no_padding, no_padding_2_padding

    batch.meta_info['temperature'] = config.actor_rollout_ref.rollout.temperature
    batch_td = left_right_2_no_padding(batch.to_tensordict())
    tu.assign_non_tensor(batch_td, calculate_entropy=True, calculate_sum_pi_squared=False, compute_loss=False)
    output = worker.compute_log_prob(batch_td)
    log_probs = no_padding_2_padding(tu.get(output, 'log_probs'), batch_td)
    return DataProto.from_tensordict(tu.get_tensordict({'old_log_probs': log_probs.float()}))


def update_actor(worker, batch, config) -> dict[str, list[float]]:
    """RayPPOTrainer._update_actor: the metadata it sets, then the worker's update_actor."""
    from verl.utils import tensordict_utils as tu
    from verl.workers.utils.padding import left_right_2_no_padding

    actor = config.actor_rollout_ref.actor
    batch.meta_info['multi_turn'] = False
    batch.meta_info['temperature'] = config.actor_rollout_ref.rollout.temperature
    batch_td = left_right_2_no_padding(batch.to_tensordict())
    mini_batch = actor.ppo_mini_batch_size * config.actor_rollout_ref.rollout.n
    tu.assign_non_tensor(batch_td, calculate_entropy=actor.calculate_entropy or actor.entropy_coeff != 0.0,
                         distillation_use_topk=False, distillation_only=False, global_batch_size=mini_batch,
                         mini_batch_size=mini_batch, epochs=actor.ppo_epochs, seed=actor.data_loader_seed,
                         dataloader_kwargs={'shuffle': actor.shuffle}, compute_loss=True)
    output = worker.update_actor(batch_td)
    metrics = tu.get(output, 'metrics')
    return {key: [float(value) for value in (values if isinstance(values, list) else [values])]
            for key, values in metrics.items()}


def parameters(worker) -> dict[str, torch.Tensor]:
    module = worker.actor.engine.module
    return {name: param.detach().full_tensor().float().clone() if hasattr(param, 'full_tensor')
            else param.detach().float().clone() for name, param in module.named_parameters()}


def run(spec: dict[str, Any], model_path: Path, work: Path) -> dict[str, Any]:
    """One worker from its own config: old log-probs, GRPO advantages, update_actor."""
    from verl.trainer.ppo.core_algos import AdvantageEstimator
    from verl.trainer.ppo.ray_trainer import compute_advantage
    from verl.workers.engine_workers import ActorRolloutRefWorker

    started = time.perf_counter()
    config = compose_config(model_path, spec)
    batch = build_batch(*rollout(model_path, seed=spec.get('seed', 0)))
    worker = ActorRolloutRefWorker(config.actor_rollout_ref, role='actor')
    worker.init_model()
    before = parameters(worker)
    batch = batch.union(old_log_probs(worker, batch, config))
    batch = compute_advantage(batch, adv_estimator=AdvantageEstimator.GRPO, num_repeat=ROLLOUT_N,
                              norm_adv_by_std_in_grpo=True)
    update_started = time.perf_counter()
    metrics = update_actor(worker, batch, config)
    update_s = time.perf_counter() - update_started
    after = parameters(worker)
    torch.save({'before': before, 'after': after}, work / f'{spec["name"]}.pt')
    return {
        'metrics': metrics,
        'parameters_changed': {name: bool((after[name] - before[name]).abs().max() > 0) for name in before},
        'advantages_spread': float(batch.batch['advantages'][batch.batch['response_mask'].bool()].std()),
        'autocast_dtype': str(getattr(worker.actor.engine, '_autocast_dtype', None)),
        'update_actor_s': update_s,
        'run_s': time.perf_counter() - started,
    }


def main(spec_path: str, out_path: str) -> None:
    """SPEC: {"work_dir": ..., "runs": [{"name": ..., "loss_mode": ..., ...}, ...]}; runs share the imports."""
    spec = json.loads(Path(spec_path).read_text())
    started = time.perf_counter()
    for name, value in {'RANK': '0', 'LOCAL_RANK': '0', 'WORLD_SIZE': '1', 'MASTER_ADDR': '127.0.0.1'}.items():
        os.environ.setdefault(name, value)
    os.environ.setdefault('MASTER_PORT', str(spec.get('port', 29611)))
    # verl would ask for 'cpu:gloo,cpu:gloo' (its CPU half plus the device's), which torch refuses;
    # an existing default group is kept by verl.
    torch.distributed.init_process_group('gloo', rank=0, world_size=1)
    import verl.workers.engine_workers  # noqa: F401  (the import time is reported apart from the runs)

    work = Path(spec['work_dir'])
    model_path = build_tiny_model(work / 'model', seed=0)
    results: dict[str, Any] = {'imports_s': time.perf_counter() - started, 'runs': {}}
    for run_spec in spec['runs']:
        results['runs'][run_spec['name']] = run(run_spec, model_path, work)
        Path(out_path).write_text(json.dumps(results, indent=1))
    results['total_s'] = time.perf_counter() - started
    Path(out_path).write_text(json.dumps(results, indent=1))
    torch.distributed.destroy_process_group()


if __name__ == '__main__':
    main(*sys.argv[1:3])
