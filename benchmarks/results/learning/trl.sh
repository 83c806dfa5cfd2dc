#!/usr/bin/env bash
# Item 9: the study's first two seeds through TRL (FIPOGRPOTrainer, and TRL's own GRPOTrainer for DAPO), two side by side.
cd /work/main
run() {
    OMP_NUM_THREADS=1 .venv-learn/bin/python runs/learn-study/code/trl_run.py --study runs/learn-study --algorithm "$1" \
        --seed "$2" > "runs/learn-study/trl-$1-s$2.log" 2>&1
    local code=$?
    echo "$(date +%T) trl $1 seed $2: exit $code"
}
run fipo-swift 1 & run fipo-swift 2 & wait
run dapo 1 & run dapo 2 & wait
echo "$(date +%T) trl done"
