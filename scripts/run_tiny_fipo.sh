#!/usr/bin/env bash
# The main job: set up .venv, then the short learning run (examples/learn/quick_run.sh): build the mod-10 task and a
# character-level Qwen2, train it with `swift sft`, then with `swift rlhf --loss_type fipo` (off-policy reuse), print
# the FIPO metrics of every step and end with `held-out accuracy: X% -> Y%`. Arguments go to quick_run.sh
# (WORK_DIR, default runs/learn-quick, then extra `swift rlhf` flags). The 4-step run of a random-weight model that
# this job used to be: bash examples/tiny/train_fipo_cpu.sh.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/setup.sh" 4.6.0 "$root/.venv"
source "$root/.venv/bin/activate"
cd "$root"
bash examples/learn/quick_run.sh "${@:-runs/learn-quick}"
