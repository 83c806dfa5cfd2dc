#!/usr/bin/env bash
# FIPO GRPO on ONE GPU, vLLM generating in the same process as training ("colocate").
#   bash examples/fipo_single_gpu_vllm_colocate.sh
# Needs: pip install swift-fipo 'ms-swift>=4.2.2' vllm   (a CUDA GPU; vLLM does not run on CPU).
# Override the model / dataset with MODEL=... DATASET=... ; anything after the script name goes to swift rlhf.
# Status: flags checked against ms-swift's argument classes by tests/test_examples.py; not run here (no GPU).
set -euo pipefail
MODEL="${MODEL:-Qwen/Qwen2.5-1.5B-Instruct}"
DATASET="${DATASET:-AI-MO/NuminaMath-TIR#2000}"

# --loss_type fipo ............ FIPO (served by swift-fipo once installed; no extra flag needed).
# --fipo_decay_rate 32 ......... Future-KL half-life in tokens (gamma = 2^(-1/32)).
# --fipo_clip_range 0.2 ........ influence weight clipped to [1, 1.2] with --fipo_clip_high_only true.
# --fipo_safety_threshold 4.0 .. negative-advantage tokens with ratio > 4 get their weight clamped to [0.8, 1].
# --num_iterations 2 ........... every rollout is trained on twice. FIPO only acts off-policy: on the first
#                                pass log pi_new == log pi_old, Future-KL is 0 and FIPO == DAPO.
# --epsilon 0.2 --epsilon_high 0.28  DAPO's clip-higher (the scaffold FIPO keeps).
# --beta 0 ..................... no reference-model KL (DAPO/FIPO default), so no reference model is loaded.
# --use_vllm true --vllm_mode colocate  vLLM lives in the training process and shares the GPU:
# --vllm_gpu_memory_utilization 0.4   ... it may take 40% of GPU memory,
# --sleep_level 1 .............. and releases it (weights offloaded) while the trainer runs.
# --offload_model/--offload_optimizer true  trainer state leaves the GPU during generation.
# --tuner_type lora ............ LoRA keeps a 1.5B run inside one 24-80 GB GPU; use full for more memory.
# --per_device_train_batch_size 8 --num_generations 8  one prompt group (8 completions) per step;
#                                completions of one prompt must share a step for the group advantage.
# --gradient_accumulation_steps 2  two prompt groups per optimizer step.
swift rlhf \
    --rlhf_type grpo \
    --loss_type fipo \
    --fipo_decay_rate 32 \
    --fipo_clip_range 0.2 \
    --fipo_clip_high_only true \
    --fipo_safety_threshold 4.0 \
    --num_iterations 2 \
    --epsilon 0.2 \
    --epsilon_high 0.28 \
    --beta 0 \
    --model "$MODEL" \
    --dataset "$DATASET" \
    --reward_funcs accuracy format \
    --use_vllm true \
    --vllm_mode colocate \
    --vllm_gpu_memory_utilization 0.4 \
    --vllm_max_model_len 6144 \
    --sleep_level 1 \
    --offload_model true \
    --offload_optimizer true \
    --tuner_type lora \
    --lora_rank 32 \
    --lora_alpha 64 \
    --torch_dtype bfloat16 \
    --max_completion_length 4096 \
    --num_generations 8 \
    --per_device_train_batch_size 8 \
    --gradient_accumulation_steps 2 \
    --temperature 1.0 \
    --learning_rate 1e-5 \
    --num_train_epochs 1 \
    --gradient_checkpointing true \
    --logging_steps 1 \
    --save_steps 200 \
    --save_total_limit 2 \
    --log_completions true \
    --report_to tensorboard \
    --output_dir output/fipo-single-gpu \
    "$@"
