#!/usr/bin/env bash
# The FIPO paper's 7B recipe (arXiv 2603.19835; authors' verl code, loss mode future_kl) in ms-swift flags.
# Run on each of the 16 nodes (8 GPUs each): NNODES=16 NODE_RANK=<0..15> MASTER_ADDR=<node 0> bash examples/fipo_paper_7b.sh
# Needs: pip install swift-fipo 'ms-swift>=4.2.2' vllm deepspeed flash-attn (CUDA).
# Status: flags checked against ms-swift's argument classes by tests/test_examples.py; never run here.
#
# What maps, and how:
#   paper                                   ms-swift / swift-fipo
#   decay rate 32                           --fipo_decay_rate 32
#   influence clip ratio 0.2                --fipo_clip_range 0.2
#   clip high-only: false (7B)              --fipo_clip_high_only false
#   safety threshold 3                      --fipo_safety_threshold 3
#   dual clip c = 10                        --delta 10. ms-swift clamps the ratio at delta for every token;
#                                           the paper only for negative advantages. Same loss: for a positive
#                                           advantage the PPO clip 1+epsilon_high binds long before 10. With
#                                           --delta set, tokens with ratio > 10 also leave the Future-KL sum,
#                                           which is the paper's participation filter (log-ratio > log c).
#   16 nodes x 8 GPUs                       NNODES=16 NPROC_PER_NODE=8 (torchrun env read by swift rlhf)
#   sequence parallel 8                     --sequence_parallel_size 8 (Ulysses; needs --padding_free true
#                                           and flash-attn)
#   responses up to 20k tokens              --max_completion_length 20480
#   rollout of 512 prompts, mini-batch 64   --generation_batch_size $((512 * G)) completions per rollout and
#                                           64 prompts (64 * G completions) per optimizer step, i.e. 8
#                                           optimizer steps per rollout, each after the first off-policy.
#                                           ms-swift counts completions, and under sequence parallelism it
#                                           multiplies gradient_accumulation_steps by the SP size itself:
#                                           check the resolved generation_batch_size / steps_per_generation
#                                           that swift rlhf prints at start-up before a long run.
# What does not map to native ms-swift flags (swift-fipo's --fipo_preset paper-7b turns these on):
#   - the log-ratio clamp to [-20, 20] before the ratio and the Future-KL;
#   - dropping a response with more than one negative-advantage token whose ratio exceeds c;
#   - the weight cap of 10 when clipping is disabled (irrelevant here: the clip is on);
#   - loss normalisation: the paper takes a token mean per micro-batch, ms-swift's fipo (like dapo) divides
#     by the global token count. No flag changes this; it rescales the gradient per step, not its direction
#     within a micro-batch.
#   - the authors' ~25 diagnostics: swift-fipo logs a subset (fipo/*), not the IS-ratio quantiles by sign.
# Not in our notes, so chosen here and marked as such: the group size G (16, DAPO's value), learning rate,
# epsilon_high 0.28 (DAPO's clip-higher), base model and dataset. Check them against the paper.
set -euo pipefail
MODEL="${MODEL:-Qwen/Qwen2.5-7B}"
DATASET="${DATASET:-BytedTsinghua-SIA/DAPO-Math-17k}"
G="${G:-16}"

# --fipo_preset paper-7b expands to the native flags below plus the safeguards listed above; the
# native flags are also written out, so the run reads the same without the preset. Per GPU:
# --per_device_train_batch_size 4 x --gradient_accumulation_steps 16 x 16 data-parallel groups (128 GPUs /
# SP 8) = 1024 completions = 64 prompts x G 16 per optimizer step.
NNODES="${NNODES:-16}" \
NPROC_PER_NODE=8 \
swift rlhf \
    --rlhf_type grpo \
    --loss_type fipo \
    --fipo_preset paper-7b \
    --fipo_decay_rate 32 \
    --fipo_clip_range 0.2 \
    --fipo_clip_high_only false \
    --fipo_safety_threshold 3 \
    --delta 10 \
    --epsilon 0.2 \
    --epsilon_high 0.28 \
    --beta 0 \
    --model "$MODEL" \
    --dataset "$DATASET" \
    --reward_funcs accuracy \
    --num_generations "$G" \
    --generation_batch_size "$((512 * G))" \
    --per_device_train_batch_size 4 \
    --gradient_accumulation_steps 16 \
    --max_completion_length 20480 \
    --sequence_parallel_size 8 \
    --padding_free true \
    --attn_impl flash_attn \
    --use_vllm true \
    --vllm_mode colocate \
    --vllm_tensor_parallel_size 8 \
    --vllm_gpu_memory_utilization 0.6 \
    --vllm_max_model_len 22528 \
    --sleep_level 1 \
    --deepspeed zero3 \
    --tuner_type full \
    --torch_dtype bfloat16 \
    --gradient_checkpointing true \
    --learning_rate 1e-6 \
    --temperature 1.0 \
    --num_train_epochs 1 \
    --overlong_filter true \
    --logging_steps 1 \
    --save_steps 50 \
    --save_total_limit 3 \
    --report_to tensorboard \
    --output_dir output/fipo-paper-7b \
    "$@"
