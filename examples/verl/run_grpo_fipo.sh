#!/usr/bin/env bash
# GRPO + FIPO in upstream verl on one node of 8 GPUs: the FIPO paper's 7B recipe (arXiv 2603.19835, the
# authors' verl loss mode future_kl) scaled from 16 nodes to one.
#   pip install 'verl[vllm]==0.9.1' swift-fipo   (CUDA; swift-fipo then registers loss_mode=fipo in every
#   Ray worker)
#   TRAIN_FILES=... VAL_FILES=... bash examples/verl/run_grpo_fipo.sh [more Hydra overrides]
# Status: overrides composed and validated against verl's own config by tests/test_integrations_verl.py;
# never run here (no GPU).
#
# What maps, and how:
#   paper                                   verl + swift-fipo
#   decay 32, clip 0.2 symmetric (7B),      +actor_rollout_ref.actor.policy_loss.fipo.preset=paper-7b (also the
#   safety 3, filter c, clamp 20, drop      participation filter, the log-ratio clamp and the sequence drop)
#   dual clip c = 10                        actor_rollout_ref.actor.clip_ratio_c=10 (FIPO's filter and drop use it)
#   PPO clip 0.2 / 0.28 (DAPO)              clip_ratio_low=0.2 clip_ratio_high=0.28
#   rollout 512 prompts, mini-batch 64      data.train_batch_size=64, ppo_mini_batch_size=8: still 8 optimizer
#   (8 updates per rollout)                 steps per rollout, each after the first off-policy (FIPO needs that)
#   responses up to 20k tokens              data.max_response_length=20480, dynamic batch size, Ulysses SP 4
#   token-mean per micro-batch              loss_agg_mode=token-mean over verl's global batch (see docs/verl.md:
#                                           a dropped response still counts in verl's token count)
# Chosen here, not from the paper: group size 16, learning rate 1e-6, the model, the data files.
set -euo pipefail
MODEL="${MODEL:-Qwen/Qwen2.5-7B}"
TRAIN_FILES="${TRAIN_FILES:-$HOME/data/dapo-math-17k/train.parquet}"
VAL_FILES="${VAL_FILES:-$HOME/data/aime-2024/test.parquet}"
N="${N:-16}"

python3 -m verl.trainer.main_ppo \
    algorithm.adv_estimator=grpo \
    algorithm.use_kl_in_reward=False \
    data.train_files="$TRAIN_FILES" \
    data.val_files="$VAL_FILES" \
    data.train_batch_size=64 \
    data.max_prompt_length=2048 \
    data.max_response_length=20480 \
    data.filter_overlong_prompts=True \
    data.truncation=error \
    actor_rollout_ref.model.path="$MODEL" \
    actor_rollout_ref.model.use_remove_padding=True \
    actor_rollout_ref.model.enable_gradient_checkpointing=True \
    actor_rollout_ref.actor.policy_loss.loss_mode=fipo \
    +actor_rollout_ref.actor.policy_loss.fipo.preset=paper-7b \
    actor_rollout_ref.actor.clip_ratio_low=0.2 \
    actor_rollout_ref.actor.clip_ratio_high=0.28 \
    actor_rollout_ref.actor.clip_ratio_c=10.0 \
    actor_rollout_ref.actor.loss_agg_mode=token-mean \
    actor_rollout_ref.actor.use_kl_loss=False \
    actor_rollout_ref.actor.entropy_coeff=0 \
    actor_rollout_ref.actor.optim.lr=1e-6 \
    actor_rollout_ref.actor.ppo_mini_batch_size=8 \
    actor_rollout_ref.actor.ppo_epochs=1 \
    actor_rollout_ref.actor.use_dynamic_bsz=True \
    actor_rollout_ref.actor.ppo_max_token_len_per_gpu=24576 \
    actor_rollout_ref.actor.ulysses_sequence_parallel_size=4 \
    actor_rollout_ref.actor.fsdp_config.param_offload=False \
    actor_rollout_ref.actor.fsdp_config.optimizer_offload=False \
    actor_rollout_ref.ref.log_prob_max_token_len_per_gpu=24576 \
    actor_rollout_ref.rollout.name=vllm \
    actor_rollout_ref.rollout.n="$N" \
    actor_rollout_ref.rollout.temperature=1.0 \
    actor_rollout_ref.rollout.tensor_model_parallel_size=2 \
    actor_rollout_ref.rollout.gpu_memory_utilization=0.6 \
    actor_rollout_ref.rollout.log_prob_use_dynamic_bsz=True \
    actor_rollout_ref.rollout.log_prob_max_token_len_per_gpu=24576 \
    trainer.logger='["console","tensorboard"]' \
    trainer.project_name=fipo \
    trainer.experiment_name=qwen2.5-7b-grpo-fipo \
    trainer.n_gpus_per_node=8 \
    trainer.nnodes=1 \
    trainer.save_freq=50 \
    trainer.test_freq=10 \
    trainer.total_epochs=1 \
    "$@"
