#!/usr/bin/env bash
# FIPO GRPO on one 8-GPU node: 2 GPUs serve vLLM rollouts (swift rollout), 6 GPUs train with DeepSpeed ZeRO-3.
#   bash examples/fipo_multi_gpu_zero3_vllm_server.sh
# Needs: pip install swift-fipo 'ms-swift>=4.2.2' vllm deepspeed   (8 CUDA GPUs).
# Override MODEL=... DATASET=... PORT=... ; anything after the script name goes to swift rlhf.
# Status: flags checked against ms-swift's argument classes by tests/test_examples.py; not run here (no GPU).
set -euo pipefail
MODEL="${MODEL:-Qwen/Qwen2.5-7B-Instruct}"
DATASET="${DATASET:-AI-MO/NuminaMath-TIR}"
PORT="${PORT:-8000}"

# 1) The rollout server. It only generates: FIPO needs nothing from it (the old log-probs FIPO compares
#    against are recomputed by the trainer), so swift-fipo is not involved on this side.
#    --vllm_data_parallel_size 2 ... two vLLM engines, one per GPU (tensor parallel 1).
CUDA_VISIBLE_DEVICES=6,7 \
swift rollout \
    --model "$MODEL" \
    --vllm_data_parallel_size 2 \
    --vllm_tensor_parallel_size 1 \
    --vllm_max_model_len 10240 \
    --port "$PORT" &
rollout_pid=$!
trap 'kill "$rollout_pid" 2>/dev/null || true' EXIT
until curl -sf "http://127.0.0.1:${PORT}/health/" >/dev/null; do sleep 5; done

# 2) The trainer: 6 processes (NPROC_PER_NODE), each with its slice of every ZeRO-3 sharded model/optimizer.
#    --deepspeed zero3 ............. ms-swift's built-in ZeRO-3 config (bf16 auto).
#    --use_vllm true --vllm_mode server --vllm_server_host/port  generation goes to the server above;
#                                    weights are pushed to it after every optimizer step.
#    --steps_per_generation 4 ...... one rollout feeds 4 optimizer steps. Steps 2-4 train on log-probs
#                                    from an older policy, so FIPO's Future-KL is non-zero there (the
#                                    paper's "mini-batches of a larger rollout"). --num_iterations 1 (default).
#    --per_device_train_batch_size 8 x 6 GPUs x --gradient_accumulation_steps 2 = 96 completions per optimizer
#                                    step = 12 prompts x --num_generations 8; one rollout = 4 x 96 completions.
#    FIPO flags: ms-swift's defaults written out (see the single-GPU recipe for each one's meaning).
CUDA_VISIBLE_DEVICES=0,1,2,3,4,5 \
NPROC_PER_NODE=6 \
swift rlhf \
    --rlhf_type grpo \
    --loss_type fipo \
    --fipo_decay_rate 32 \
    --fipo_clip_range 0.2 \
    --fipo_clip_high_only true \
    --fipo_safety_threshold 4.0 \
    --steps_per_generation 4 \
    --epsilon 0.2 \
    --epsilon_high 0.28 \
    --beta 0 \
    --model "$MODEL" \
    --dataset "$DATASET" \
    --reward_funcs accuracy \
    --use_vllm true \
    --vllm_mode server \
    --vllm_server_host 127.0.0.1 \
    --vllm_server_port "$PORT" \
    --deepspeed zero3 \
    --tuner_type full \
    --torch_dtype bfloat16 \
    --attn_impl flash_attn \
    --max_completion_length 8192 \
    --num_generations 8 \
    --per_device_train_batch_size 8 \
    --gradient_accumulation_steps 2 \
    --temperature 1.0 \
    --learning_rate 1e-6 \
    --num_train_epochs 1 \
    --gradient_checkpointing true \
    --dynamic_sample true \
    --overlong_filter true \
    --logging_steps 1 \
    --save_steps 100 \
    --save_total_limit 2 \
    --report_to tensorboard \
    --output_dir output/fipo-zero3-server \
    "$@"
