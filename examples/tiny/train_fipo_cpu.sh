#!/usr/bin/env bash
# FIPO GRPO training of a tiny local model on CPU, with the real `swift rlhf` command line.
#   bash examples/tiny/train_fipo_cpu.sh [WORK_DIR]      (default: runs/tiny-fipo)
# Needs swift-fipo installed (pip install .): `--loss_type fipo` is then served by the plugin.
# Extra arguments after WORK_DIR are passed on to `swift rlhf` (e.g. --loss_type dapo).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
work="${1:-runs/tiny-fipo}"
shift || true
mkdir -p "$work"
[ -f "$work/model/config.json" ] || python "$here/build_tiny_model.py" "$work"

# The tiny model is built locally, so: no hub, no model-type detection.
# FIPO only acts off-policy: with --num_iterations 2 every rollout is trained on twice, and on the
# second pass log pi_new != log pi_old, so Future-KL and the influence weights move off 1.
export HF_HUB_OFFLINE=1 MODELSCOPE_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# ms-swift 3.x names the tuner flag --train_type.
tuner_flag=--tuner_type
[ "$(python -c 'import importlib.metadata as m; print(m.version("ms-swift").split(".")[0])')" = 3 ] && tuner_flag=--train_type
# FIPO's own flags keep their defaults here (--fipo_decay_rate 32 --fipo_clip_range 0.2
# --fipo_clip_high_only true --fipo_safety_threshold 4.0); any of them can be added after WORK_DIR.
swift rlhf \
    --rlhf_type grpo \
    --loss_type fipo \
    --num_iterations 2 \
    --model "$work/model" --model_type qwen2 --template qwen --check_model false \
    --dataset "$work/train.jsonl" \
    --external_plugins "$here/reward.py" \
    --reward_funcs tiny_sum \
    "$tuner_flag" full \
    --torch_dtype float32 \
    --use_cpu true \
    --num_generations 4 \
    --per_device_train_batch_size 4 \
    --gradient_accumulation_steps 1 \
    --max_completion_length 32 \
    --temperature 1.0 \
    --learning_rate 1e-3 \
    --max_steps 4 \
    --logging_steps 1 \
    --save_strategy no \
    --report_to none \
    --dataloader_num_workers 0 \
    --dataloader_persistent_workers false \
    --dataset_num_proc 1 \
    --seed 42 \
    --output_dir "$work/output" \
    "$@"

# ms-swift writes every logged step to logging.jsonl (directly in output/ with --add_version false); show
# the FIPO metrics.
log="$(ls -t "$work"/output/logging.jsonl "$work"/output/*/logging.jsonl 2>/dev/null | head -n 1 || true)"
python - "$log" <<'PY'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
rows = [row for row in rows if any(key.startswith('fipo/') for key in row)]
keys = sorted({key for row in rows for key in row if key.startswith('fipo/')})
print(f'\nFIPO metrics per step ({sys.argv[1]}):')
print(f'{"step":<28}' + ''.join(f'{row["global_step/max_steps"]:>10}' for row in rows))
for key in keys:
    print(f'{key:<28}' + ''.join(f'{row.get(key, float("nan")):>10.4f}' for row in rows))
PY
