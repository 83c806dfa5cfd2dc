#!/usr/bin/env bash
# The study, run from a snapshot of examples/learn (runs/learn-study/code) with the .venv-learn environment.
cd /work/main
OMP_NUM_THREADS=1 exec .venv-learn/bin/python runs/learn-study/code/study.py --out runs/learn-study --seeds 8 --jobs 2 \
    --sft_steps 600 --sft_lr 2e-3 --sft_more_steps 400 --sft_more_lr 1e-3 \
    --rl_steps 30 --eval_every 10 --prompts_per_step 4 --generations 8 --steps_per_generation 5 --rl_lr 1e-4 \
    --source_commit 43accab78c3ef964c7c2894617540822589f9fe6
