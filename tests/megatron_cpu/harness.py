"""Test-only: ms-swift's real ``MegatronGRPOTrainer`` on a tiny megatron-core ``GPTModel``, on CPU.

Used by the worker scripts of this folder (each runs in its own process: the import shim of
``tests/megatron_cpu/__init__.py`` touches module state). What is real here: megatron-core 0.16.1's
``GPTModel`` (local layer spec) carrying the tiny HF Qwen2's weights, ms-swift's trainer class built by
ms-swift's own Ray ``GRPOLoss``, its ``forward_step`` / ``loss_func``, its batch helpers
(``build_completion_mask_and_seq_lengths``, ``GRPOBatch``, ``compute_per_token_logps_fn``) and
torch.distributed under gloo. Faked: Transformer Engine / triton at import time and megatron-core's
CUDA calls (see ``cpu_megatron``), nothing else.
"""

from __future__ import annotations

import dataclasses
import os
import socket
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from megatron_cpu import cpu_megatron, import_trainer_module

PROMPT_LENGTHS = (5, 3, 6, 4)  # one prompt per row; completions follow, then right padding
COMPLETION_LENGTHS = (9, 4, 7, 11)


def init_distributed() -> None:
    """gloo process group (torchrun's environment, else a world of one) and megatron-core's groups (1, 1)."""
    from megatron.core import parallel_state as mpu
    if not torch.distributed.is_initialized():
        if 'RANK' not in os.environ:
            with socket.socket() as probe:  # a free local port for a world of one
                probe.bind(('127.0.0.1', 0))
                port = probe.getsockname()[1]
            os.environ.update(RANK='0', WORLD_SIZE='1', LOCAL_RANK='0', MASTER_ADDR='127.0.0.1',
                              MASTER_PORT=str(port))
        torch.distributed.init_process_group('gloo')
    if not mpu.model_parallel_is_initialized():
        mpu.initialize_model_parallel(1, 1)
    # Never model_parallel_cuda_manual_seed: it needs a CUDA RNG (cpu_megatron makes the tracker a no-op).


def megatron_args(**overrides: Any) -> Any:
    """``MegatronRLHFArguments`` with its dataclass defaults, ``__post_init__`` not run (it loads the model
    and asserts use_vllm), then what ``megatron rlhf --rlhf_type grpo --loss_type fipo`` would resolve for
    this batch; ``overrides`` last."""
    from swift.megatron.arguments import MegatronRLHFArguments
    args = object.__new__(MegatronRLHFArguments)
    for field in dataclasses.fields(MegatronRLHFArguments):
        if field.default is not dataclasses.MISSING:
            value = field.default
        elif field.default_factory is not dataclasses.MISSING:
            value = field.default_factory()
        else:
            value = None
        object.__setattr__(args, field.name, value)
    batch = len(PROMPT_LENGTHS)
    resolved = dict(rlhf_type='grpo', loss_type='fipo', task_type='causal_lm', padding_free=False, beta=0.0,
                    num_microbatches=1, micro_batch_size=batch, global_batch_size=batch, num_generations=batch,
                    generation_batch_size=2 * batch, per_device_generation_batch_size=2 * batch,
                    steps_per_generation=2, temperature=1.0, max_completion_length=max(COMPLETION_LENGTHS))
    for name, value in {**resolved, **overrides}.items():
        object.__setattr__(args, name, value)
    return args


def new_trainer(args: Any) -> Any:
    """The trainer exactly as ms-swift's Ray ``GRPOLoss`` builds it (``__new__``, ``_setup_teacher``,
    ``_init_grpo_params``, ``_prepare_metrics``, the attributes its loss reads)."""
    from swift.ray.megatron.loss.grpo import GRPOLoss
    return GRPOLoss(args)._dummy


def hf_model(path: Path) -> Any:
    from transformers import AutoModelForCausalLM
    return AutoModelForCausalLM.from_pretrained(path, torch_dtype=torch.float32).eval()


def gpt_model(hf: Any) -> torch.nn.Module:
    """megatron-core's GPTModel (local spec, CPU init) with the HF Qwen2's weights copied in."""
    from megatron.core.models.gpt import GPTModel
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
    from megatron.core.transformer import TransformerConfig
    config = hf.config
    heads, groups = config.num_attention_heads, config.num_key_value_heads
    head_dim = config.hidden_size // heads
    rope = getattr(config, 'rope_parameters', None) or {}
    theta = rope.get('rope_theta', getattr(config, 'rope_theta', 10000.0))
    core = TransformerConfig(
        num_layers=config.num_hidden_layers, hidden_size=config.hidden_size, ffn_hidden_size=config.intermediate_size,
        num_attention_heads=heads, num_query_groups=groups, kv_channels=head_dim, add_bias_linear=False,
        add_qkv_bias=True, gated_linear_unit=True, activation_func=torch.nn.functional.silu, normalization='RMSNorm',
        layernorm_epsilon=config.rms_norm_eps, attention_dropout=0.0, hidden_dropout=0.0, use_cpu_initialization=True,
        params_dtype=torch.float32, bias_activation_fusion=False, masked_softmax_fusion=False,
        bias_dropout_fusion=False, apply_rope_fusion=False, gradient_accumulation_fusion=False,
        persist_layer_norm=False)
    model = GPTModel(core, get_gpt_layer_local_spec(normalization='RMSNorm'), vocab_size=config.vocab_size,
                     max_sequence_length=config.max_position_embeddings, position_embedding_type='rope',
                     rotary_base=int(theta), share_embeddings_and_output_weights=False)
    source = dict(hf.named_parameters())
    target = dict(model.named_parameters())
    copied = {}

    def put(name: str, value: torch.Tensor) -> None:
        assert target[name].shape == value.shape, (name, target[name].shape, value.shape)
        copied[name] = value

    put('embedding.word_embeddings.weight', source['model.embed_tokens.weight'])
    put('decoder.final_layernorm.weight', source['model.norm.weight'])
    put('output_layer.weight', source['lm_head.weight'])
    per_group = heads // groups
    for layer in range(config.num_hidden_layers):
        hf_prefix, prefix = f'model.layers.{layer}.', f'decoder.layers.{layer}.'
        # Megatron's fused QKV is laid out per query group: that group's query heads, then its key, its value.
        for kind in ('weight', 'bias'):
            q, k, v = (source[f'{hf_prefix}self_attn.{name}_proj.{kind}'] for name in 'qkv')
            q = q.reshape(groups, per_group * head_dim, *q.shape[1:])
            k = k.reshape(groups, head_dim, *k.shape[1:])
            v = v.reshape(groups, head_dim, *v.shape[1:])
            put(f'{prefix}self_attention.linear_qkv.{kind}', torch.cat([q, k, v], dim=1).reshape(-1, *q.shape[2:]))
        put(f'{prefix}self_attention.linear_proj.weight', source[f'{hf_prefix}self_attn.o_proj.weight'])
        put(f'{prefix}self_attention.linear_qkv.layer_norm_weight'
            if f'{prefix}self_attention.linear_qkv.layer_norm_weight' in target else f'{prefix}input_layernorm.weight',
            source[f'{hf_prefix}input_layernorm.weight'])
        put(f'{prefix}mlp.linear_fc1.layer_norm_weight'
            if f'{prefix}mlp.linear_fc1.layer_norm_weight' in target else f'{prefix}pre_mlp_layernorm.weight',
            source[f'{hf_prefix}post_attention_layernorm.weight'])
        put(f'{prefix}mlp.linear_fc1.weight', torch.cat([source[f'{hf_prefix}mlp.gate_proj.weight'],
                                                         source[f'{hf_prefix}mlp.up_proj.weight']]))
        put(f'{prefix}mlp.linear_fc2.weight', source[f'{hf_prefix}mlp.down_proj.weight'])
    missing = set(target) - set(copied)
    assert not missing, f'GPTModel parameters without an HF source: {sorted(missing)}'
    with torch.no_grad():
        for name, value in copied.items():
            target[name].copy_(value)
    return model


def token_batch(vocab_size: int, seed: int = 0, prompt_lengths: Iterable[int] = PROMPT_LENGTHS,
                completion_lengths: Iterable[int] = COMPLETION_LENGTHS, pad_id: int = 0) -> dict[str, torch.Tensor]:
    """Right-padded prompt + completion rows as ms-swift's template collates them for Megatron without
    padding_free: ``labels`` -100 on prompt and padding, *not* shifted (``prepare_batch`` rolls them), and the
    ``[B, 1, S, S]`` boolean attention mask (True: masked) the collator builds: causal, padded keys masked."""
    generator = torch.Generator().manual_seed(seed)
    rows = list(zip(prompt_lengths, completion_lengths, strict=False))
    length = max(p + c for p, c in rows)
    input_ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    labels = torch.full_like(input_ids, -100)
    for row, (prompt, completion) in enumerate(rows):
        tokens = torch.randint(3, vocab_size, (prompt + completion,), generator=generator)
        input_ids[row, :prompt + completion] = tokens
        labels[row, prompt:prompt + completion] = tokens[prompt:]
    position_ids = torch.arange(length).expand(len(rows), length).clone()
    allowed = torch.tril(torch.ones(len(rows), length, length, dtype=torch.bool)).view(len(rows), 1, length, length)
    for row, (prompt, completion) in enumerate(rows):
        allowed[row, :, :, prompt + completion:] = False
    return dict(input_ids=input_ids, position_ids=position_ids, labels=labels, attention_mask=~allowed)


def rollout_logps(trainer: Any, model: torch.nn.Module, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
    """The old log-probs as ms-swift computes them after a rollout (``compute_per_token_logps_fn``, no grad)."""
    from swift.megatron.trainers.utils import compute_per_token_logps_fn
    logps, _ = compute_per_token_logps_fn(model, trainer.args, iter([{k: v.clone() for k, v in tokens.items()}]),
                                          temperature=trainer.temperature)
    return logps


def grpo_batch(tokens: dict[str, torch.Tensor], advantages: torch.Tensor, old_logps: torch.Tensor) -> Any:
    """ms-swift's ``GRPOBatch`` for the rows, in the full-sequence frame Megatron uses (mask rolled)."""
    from swift.rl_core.advantage import expand_advantage_to_per_token
    from swift.rl_core.data import GRPOBatch
    from swift.rlhf_trainers.utils import build_completion_mask_and_seq_lengths
    labels = tokens['labels']
    mask, seq_lengths, _ = build_completion_mask_and_seq_lengths(labels, labels.shape[0], padding_free=False)
    return GRPOBatch(completion_mask=mask, truncated_mask=torch.zeros(labels.shape[0], dtype=torch.bool),
                     seq_lengths=seq_lengths, old_per_token_logps=old_logps.masked_fill(~mask, 0.0),
                     advantages=expand_advantage_to_per_token(advantages, mask),
                     num_items_in_batch=mask.sum().to(torch.float32))


def loss_and_metrics(trainer: Any, model: torch.nn.Module, tokens: dict[str, torch.Tensor], batch: Any,
                     ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One micro-batch through ms-swift's own ``forward_step`` and the ``loss_func`` it hands back."""
    data = {**{key: value.clone() for key, value in tokens.items()}, 'grpo_batch': batch}
    output, loss_fn = type(trainer).forward_step(trainer, iter([data]), model)
    return loss_fn(output)


def gradients(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: parameter.grad.detach().clone() for name, parameter in model.named_parameters()
            if parameter.grad is not None}


def floats(metrics: dict[str, Any], prefix: str | None = None) -> dict[str, float]:
    return {key: float(value) for key, value in metrics.items() if prefix is None or key.startswith(prefix)}


__all__ = ['cpu_megatron', 'import_trainer_module', 'init_distributed', 'megatron_args', 'new_trainer', 'hf_model',
           'gpt_model', 'token_batch', 'rollout_logps', 'grpo_batch', 'loss_and_metrics', 'gradients', 'floats']
