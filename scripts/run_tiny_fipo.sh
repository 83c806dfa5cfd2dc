#!/usr/bin/env bash
# The main job: set up .venv, build the tiny model, train it with `swift rlhf --loss_type fipo` on CPU
# and print the FIPO metrics of every step.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/setup.sh" 4.6.0 "$root/.venv"
source "$root/.venv/bin/activate"
cd "$root"
bash examples/tiny/train_fipo_cpu.sh runs/tiny-fipo "$@"
