#!/usr/bin/env bash
# FIPO GRPO with ms-swift's Megatron trainer on one 8-GPU node: tensor (TP), pipeline (PP) and context (CP)
# parallelism, vLLM colocated.
#   bash examples/fipo_megatron_tp_pp_cp.sh
# Needs: pip install swift-fipo 'ms-swift>=4.2.2' vllm megatron-core mcore-bridge transformer-engine (CUDA).
# swift-fipo hooks MegatronGRPOTrainer when `megatron rlhf` imports it (the Ray pipeline, --use_ray true,
# reuses that class's loss, so it is covered the same way).
# Status: flags checked by tests/test_examples.py against the fields of ms-swift's Megatron argument classes,
# read from their source (swift.megatron cannot be imported without Transformer Engine); not run here.
set -euo pipefail
MODEL="${MODEL:-Qwen/Qwen2.5-7B-Instruct}"
DATASET="${DATASET:-AI-MO/NuminaMath-TIR}"

# Parallel layout: DP = 8 GPUs / (TP 2 x PP 2 x CP 2) = 1.
# --tensor_model_parallel_size 2 --sequence_parallel true  split each layer over 2 GPUs (activations too).
# --pipeline_model_parallel_size 2  two pipeline stages; only the last stage runs FIPO's loss.
# --context_parallel_size 2 ..... each sequence split over 2 GPUs. ms-swift gathers the context-parallel
#                                  log-prob shards back to whole rows before loss_func, so the Future-KL
#                                  (a sum along each row) sees every token.
# --padding_free true ........... packed sequences (needed for CP; FIPO still sees [B, T] rows).
# Batch sizes count completions: --global_batch_size 64 per optimizer step, --micro_batch_size 2.
# --steps_per_generation 4 ...... one rollout (4 x 64 = 256 completions = 32 prompts x --num_generations 8)
#                                  feeds 4 optimizer steps; steps 2-4 are off-policy, where FIPO acts.
#                                  Megatron GRPO refuses --num_iterations > 1, so this is the only way
#                                  to train off-policy here.
# --use_vllm true --vllm_mode colocate --vllm_tensor_parallel_size 2  vLLM shares the GPUs;
# --sleep_level 2 --offload_model true --offload_optimizer true  and both sides release memory in turn.
# FIPO flags: ms-swift's defaults written out (meanings in fipo_single_gpu_vllm_colocate.sh).
CUDA_VISIBLE_DEVICES=0,1,2,3,4,5,6,7 \
NPROC_PER_NODE=8 \
megatron rlhf \
    --rlhf_type grpo \
    --loss_type fipo \
    --fipo_decay_rate 32 \
    --fipo_clip_range 0.2 \
    --fipo_clip_high_only true \
    --fipo_safety_threshold 4.0 \
    --epsilon 0.2 \
    --epsilon_high 0.28 \
    --beta 0 \
    --model "$MODEL" \
    --dataset "$DATASET" \
    --reward_funcs accuracy \
    --tensor_model_parallel_size 2 \
    --sequence_parallel true \
    --pipeline_model_parallel_size 2 \
    --context_parallel_size 2 \
    --padding_free true \
    --global_batch_size 64 \
    --micro_batch_size 2 \
    --steps_per_generation 4 \
    --num_generations 8 \
    --use_vllm true \
    --vllm_mode colocate \
    --vllm_tensor_parallel_size 2 \
    --vllm_gpu_memory_utilization 0.5 \
    --vllm_max_model_len 10240 \
    --sleep_level 2 \
    --offload_model true \
    --offload_optimizer true \
    --tuner_type full \
    --bf16 true \
    --lr 1e-6 \
    --min_lr 1e-7 \
    --max_length 10240 \
    --max_completion_length 8192 \
    --temperature 1.0 \
    --dynamic_sample true \
    --overlong_filter true \
    --recompute_granularity full \
    --recompute_method uniform \
    --recompute_num_layers 1 \
    --train_iters 500 \
    --logging_steps 1 \
    --save_steps 100 \
    --no_save_optim true \
    --no_save_rng true \
    --finetune true \
    --output_dir megatron_output/fipo-tp2-pp2-cp2 \
    "$@"
