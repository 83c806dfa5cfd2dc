#!/usr/bin/env bash
# The short version of the learning study (README's main job): the task, a character-level Qwen2 trained from random
# weights with `swift sft`, then `swift rlhf --loss_type fipo` with off-policy reuse, the FIPO metrics of every step,
# and the held-out greedy accuracy before and after RL on the same prompts:
#   bash examples/learn/quick_run.sh [WORK_DIR]        (default: runs/learn-quick)
# Needs ms-swift and swift-fipo installed (scripts/run_tiny_fipo.sh sets up .venv and calls this).
# Extra arguments after WORK_DIR go to `swift rlhf` (e.g. --loss_type dapo to compare). A finished stage is kept:
# rerunning with the same WORK_DIR starts at the first stage without its result.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
work="${1:-runs/learn-quick}"
shift || true
mkdir -p "$work"
work="$(cd "$work" && pwd)"

# Lean settings (the full study: examples/learn/README.md). Every prompt has 4 terms, so each chain step sits at the
# same place in every example and `swift sft` teaches the chain in 500 steps (~74% of sampled chains right, ~19% of
# direct answers). The 50/50 chain/direct mix leaves the SFT model writing the chain for about half the held-out
# prompts; RL's job is the shift to always writing it. One torch thread per process: on a busy 2-core machine that
# was faster than two.
: "${SFT_STEPS:=500}" "${SFT_BATCH:=64}" "${SFT_LR:=1e-3}" "${RL_STEPS:=32}" "${RL_LR:=5e-5}" "${HELDOUT:=500}"
: "${THREADS:=1}" "${RL_NAME:=rl}"  # RL_NAME: the RL run's directory under WORK_DIR (another for, e.g., a DAPO run)
export HF_HUB_OFFLINE=1 MODELSCOPE_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
export OMP_NUM_THREADS="$THREADS" MKL_NUM_THREADS="$THREADS"
model_flags=(--model_type qwen2 --template qwen --check_model false --tuner_type full --torch_dtype float32
             --use_cpu true --report_to none --dataloader_num_workers 0 --dataset_num_proc 1 --add_version false
             --split_dataset_ratio 0 --logging_steps 1 --save_strategy steps --save_only_model true)
stage() { printf '\n== %s\n' "$*"; }

stage "task and model: $work/data, $work/init"
[ -f "$work/data/task.json" ] || python "$here/task.py" "$work/data" --sft $((SFT_STEPS * SFT_BATCH)) --rl 2000 \
    --heldout "$HELDOUT" --min_terms 4 --max_terms 4 --chain_share 0.5 >/dev/null
[ -f "$work/init/config.json" ] || python "$here/build_model.py" "$work/init" >/dev/null 2>&1
python - "$work/data/sft.jsonl" <<'PY'
import json, sys
rows = [json.loads(line)['messages'] for line in open(sys.argv[1])][:20]
for kind, wanted in (('chain', True), ('direct', False)):
    messages = next(m for m in rows if (not m[2]['content'].startswith('#')) == wanted)
    print(f'{kind} example: {messages[1]["content"]} -> {messages[2]["content"]}')
PY

sft="$work/sft/checkpoint-$SFT_STEPS"
if [ ! -f "$sft/config.json" ]; then
    stage "swift sft: $SFT_STEPS steps x $SFT_BATCH examples from random weights (log: $work/sft.log)"
    rm -rf "$work/sft"
    swift sft --model "$work/init" "${model_flags[@]}" --dataset "$work/data/sft.jsonl" \
        --per_device_train_batch_size "$SFT_BATCH" --learning_rate "$SFT_LR" --lr_scheduler_type cosine \
        --warmup_ratio 0.03 --max_steps "$SFT_STEPS" --max_length 128 --gradient_checkpointing false \
        --save_steps "$SFT_STEPS" --seed 0 --output_dir "$work/sft" >"$work/sft.log" 2>&1 &
    python "$here/progress.py" follow "$work/sft/logging.jsonl" $! loss token_acc \
        | awk 'NR == 1 || NR % 50 == 1 { print; fflush() }'  # every 50th step
    wait $! || { tail -n 30 "$work/sft.log"; echo "swift sft failed: $work/sft.log" >&2; exit 1; }
fi

stage "held-out evaluation of the SFT model ($HELDOUT prompts, greedy)"
[ -s "$work/eval-before.jsonl" ] || python "$here/evaluate.py" --heldout "$work/data/heldout.jsonl" --samples 0 \
    --out "$work/eval-before.jsonl" "$sft" 2>/dev/null | grep '^step'

rl="$work/$RL_NAME"
final="$rl/output/checkpoint-$RL_STEPS"
if [ ! -f "$final/config.json" ]; then
    # FIPO acts off-policy only: each rollout (8 prompts x 8 completions) is cut into 4 optimizer steps of 16
    # completions, so steps 2-4 of a rollout train on a policy that has moved (Future-KL != 0, weights off 1).
    stage "swift rlhf --loss_type fipo: $RL_STEPS steps, 4 per rollout (log: $rl.log)"
    rm -rf "$rl"
    mkdir -p "$rl"
    swift rlhf --rlhf_type grpo --loss_type fipo --model "$sft" "${model_flags[@]}" \
        --dataset "$work/data/rl.jsonl" --external_plugins "$here/reward.py" --reward_funcs mod10_answer \
        --num_generations 8 --per_device_train_batch_size 16 --gradient_accumulation_steps 1 \
        --steps_per_generation 4 --max_completion_length 32 --temperature 1.0 --beta 0 \
        --epsilon 0.2 --epsilon_high 0.28 --learning_rate "$RL_LR" --lr_scheduler_type constant --warmup_ratio 0 \
        --max_steps "$RL_STEPS" --save_steps "$RL_STEPS" --seed 1 --output_dir "$rl/output" "$@" \
        >"$rl.log" 2>&1 &
    python "$here/progress.py" follow "$rl/output/logging.jsonl" $! reward completions/mean_length \
        fipo/future_kl_mean fipo/influence_weight_mean fipo/influence_weight_max fipo/clipped_high_ratio
    wait $! || { tail -n 30 "$rl.log"; echo "swift rlhf failed: $rl.log" >&2; exit 1; }
fi

stage "held-out evaluation after RL (the same $HELDOUT prompts, greedy)"
cp "$work/eval-before.jsonl" "$rl/eval.jsonl"  # step 0 of the RL run, for swift-fipo plot
python "$here/evaluate.py" --heldout "$work/data/heldout.jsonl" --samples 0 --step "$RL_STEPS" \
    --out "$rl/eval.jsonl" "$final" 2>/dev/null | grep '^step'
echo "plot: swift-fipo plot $rl -o $work/quick.png"
python "$here/progress.py" result "$work/eval-before.jsonl" "$rl/eval.jsonl"
