#!/usr/bin/env bash
# FIPO on CPU with the tiny local model (no GPU, no model hub): one process, two processes (DDP over gloo),
# or two processes under DeepSpeed ZeRO-2.
#   MODE=single|ddp|zero2 bash examples/fipo_cpu_tiny.sh [WORK_DIR] [extra swift rlhf flags]
# Needs: pip install swift-fipo 'ms-swift>=4.2.2' (and deepspeed for MODE=zero2).
# Status: all three modes run in the test suite (tests/test_cli_swift.py, tests/test_cli_multiprocess.py).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
mode="${MODE:-single}"
work="${1:-runs/tiny-fipo-$mode}"
shift || true
mkdir -p "$work"

# examples/tiny/train_fipo_cpu.sh holds the FIPO run itself (--loss_type fipo --num_iterations 2, 4 steps,
# --use_cpu true, 4 completions per prompt); flags given here come after its own and override them.
case "$mode" in
single)
    exec bash "$here/tiny/train_fipo_cpu.sh" "$work" "$@" ;;
ddp)
    # NPROC_PER_NODE=2: swift rlhf starts torchrun with 2 CPU workers. --per_device_train_batch_size 2 keeps
    # the global batch at 4 completions (2 per rank x 2 ranks): one prompt group per step, split over ranks.
    NPROC_PER_NODE=2 MASTER_PORT="${MASTER_PORT:-29561}" \
        exec bash "$here/tiny/train_fipo_cpu.sh" "$work" --per_device_train_batch_size 2 "$@" ;;
zero2)
    # DeepSpeed ZeRO-2 on CPU: fp16 and bf16 must be off in both the DeepSpeed config and the trainer
    # (--fp16 false --bf16 false), since the CPU run trains in float32.
    config="$work/ds_zero2_cpu.json"
    cat > "$config" <<'JSON'
{
  "fp16": {"enabled": false},
  "bf16": {"enabled": false},
  "zero_optimization": {"stage": 2, "overlap_comm": false, "contiguous_gradients": true},
  "gradient_accumulation_steps": "auto",
  "gradient_clipping": "auto",
  "train_batch_size": "auto",
  "train_micro_batch_size_per_gpu": "auto"
}
JSON
    NPROC_PER_NODE=2 MASTER_PORT="${MASTER_PORT:-29562}" \
        exec bash "$here/tiny/train_fipo_cpu.sh" "$work" --per_device_train_batch_size 2 \
        --deepspeed "$config" --fp16 false --bf16 false "$@" ;;
*)
    echo "MODE must be single, ddp or zero2; got '$mode'" >&2
    exit 2 ;;
esac
