#!/usr/bin/env bash
# GRPO-style PPO + FIPO in OpenRLHF 0.11 on one node of 8 GPUs: the FIPO paper's 7B recipe (arXiv 2603.19835)
# scaled down to one node, with OpenRLHF's Ray launcher and vLLM rollouts.
#   pip install 'openrlhf[vllm]==0.11.2' swift-fipo   (CUDA; swift-fipo's .pth then hooks OpenRLHF in the driver
#   and in every Ray actor)
#   ray start --head --num-gpus 8
#   PROMPT_DATA=... bash examples/openrlhf/run_fipo.sh [more OpenRLHF options]
# Status: every option parsed and checked by OpenRLHF's own train_ppo_ray parser with the FIPO options
# (tests/test_integrations_openrlhf.py); never run here (no GPU).
#
# What maps, and how:
#   paper                                  OpenRLHF + swift-fipo
#   decay 32, clip 0.2 symmetric (7B),     --actor.fipo.preset paper-7b (also the participation filter c = 10,
#   safety 3, filter, clamp 20, drop       the log-ratio clamp and the sequence drop)
#   dual clip c = 10                       --actor.dual_clip 10 (the preset would set it; given here to be seen)
#   PPO clip 0.2 / 0.28 (DAPO)             --actor.eps_clip_low_high 0.2 0.28
#   8 optimizer steps per rollout          --rollout.batch_size 128 x --rollout.n_samples_per_prompt 16 = 2048
#                                          samples, --train.batch_size 256: 8 steps, each after the first
#                                          off-policy (FIPO needs that)
#   responses up to 20k tokens             --rollout.max_new_tokens 20480, packed samples, dynamic batches
#   token-mean                             --actor.loss_agg_mode token-mean over OpenRLHF's global token count
# Chosen here, not from the paper: the model, the data, group size 16, learning rate 1e-6, no KL term.
set -euo pipefail
MODEL="${MODEL:-Qwen/Qwen2.5-7B}"
PROMPT_DATA="${PROMPT_DATA:-$HOME/data/dapo-math-17k/train.jsonl}"
SAVE_PATH="${SAVE_PATH:-./checkpoint/qwen2.5-7b-fipo}"

python3 -m openrlhf.cli.train_ppo_ray \
    --ref.num_nodes 1 --ref.num_gpus_per_node 8 \
    --actor.num_nodes 1 --actor.num_gpus_per_node 8 \
    --vllm.num_engines 4 --vllm.tensor_parallel_size 2 --vllm.gpu_memory_utilization 0.6 \
    --train.colocate_all --vllm.enable_sleep --ds.enable_sleep \
    --actor.model_name_or_path "$MODEL" \
    --reward.remote_url "${REWARD_URL:-http://localhost:5000/get_reward}" \
    --data.prompt_dataset "$PROMPT_DATA" --data.input_key prompt --data.label_key answer --data.apply_chat_template \
    --ckpt.output_dir "$SAVE_PATH" \
    --algo.advantage.estimator group_norm \
    --rollout.batch_size 128 --rollout.n_samples_per_prompt 16 \
    --train.batch_size 256 --train.micro_batch_size 1 --rollout.micro_batch_size 4 \
    --train.max_epochs 1 \
    --data.max_len 22528 --rollout.max_new_tokens 20480 \
    --ds.packing_samples --train.dynamic_batch_enable --ds.attn_implementation flash_attention_2 \
    --ds.zero_stage 3 --ds.param_dtype bf16 --actor.gradient_checkpointing_enable \
    --actor.adam.lr 1e-6 --algo.kl.init_coef 0 \
    --actor.policy_loss_type fipo --actor.fipo.preset paper-7b \
    --actor.dual_clip 10 --actor.eps_clip_low_high 0.2 0.28 \
    --actor.loss_agg_mode token-mean \
    "$@"
