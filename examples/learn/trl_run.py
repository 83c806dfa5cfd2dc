"""The study's RL run through TRL: ``swift_fipo.FIPOGRPOTrainer`` (or TRL's own GRPOTrainer for DAPO) from the same
SFT checkpoint, data, seed and hyper-parameters as study.py's ``swift rlhf`` runs, evaluated the same way.

    python examples/learn/trl_run.py --study DIR --algorithm fipo-swift --seed 1 [--out DIR/trl/fipo-swift-s1]

Reads the study's settings (summary.json or the first result.json) so that the flags match: prompts per step,
generations, optimizer steps per rollout, learning rate, steps, evaluation interval. Writes output/logging.jsonl
(TRL's log history in ms-swift's row form, for ``swift-fipo plot``), eval.jsonl and result.json. Never imports
ms-swift: its GRPO module deletes ``trl.GRPOTrainer.__init__`` in the process that imports it.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from reward import mod10_answer_reward  # noqa: E402

PRESETS = {'fipo-swift': 'swift', 'fipo-paper-7b': 'paper-7b'}


def settings_of(study: Path) -> dict[str, Any]:
    """The RL settings of the study's swift runs, read from a result's recorded command line."""
    results = sorted(study.glob('runs/*/result.json'))
    if not results:
        raise SystemExit(f'{study}: no finished ms-swift run (runs/*/result.json) to copy the settings from')
    argv = shlex.split(json.loads(results[0].read_text())['command'])
    flags = {argv[i][2:]: argv[i + 1] for i in range(len(argv) - 1) if argv[i].startswith('--')}
    return flags


def to_logging_rows(history: list[dict[str, Any]], max_steps: int) -> list[dict[str, Any]]:
    """TRL's log history as ms-swift logging.jsonl rows (``global_step/max_steps``: ``N/M``)."""
    rows = []
    for entry in history:
        if 'step' not in entry or 'train_runtime' in entry:
            continue
        row = {key: value for key, value in entry.items() if key != 'step'}
        row['global_step/max_steps'] = f'{entry["step"]}/{max_steps}'
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--study', type=Path, required=True, help='a study directory with a finished ms-swift run')
    parser.add_argument('--algorithm', choices=['dapo', *PRESETS], default='fipo-swift')
    parser.add_argument('--seed', type=int, default=1)
    parser.add_argument('--out', type=Path, default=None, help='default: STUDY/trl/<algorithm>-s<seed>')
    args = parser.parse_args()
    if 'swift' in sys.modules:
        raise SystemExit("ms-swift is imported in this process: TRL's GRPOTrainer lost its __init__; run this alone")
    study = args.study.resolve()
    flags = settings_of(study)
    out = (args.out or study / 'trl' / f'{args.algorithm}-s{args.seed}').resolve()
    if (out / 'result.json').exists():
        print(f'{out}: already done')
        return
    out.mkdir(parents=True, exist_ok=True)

    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    torch.set_num_threads(1)
    rows = [json.loads(line) for line in Path(flags['dataset']).read_text().splitlines() if line.strip()]
    dataset = Dataset.from_list([{'prompt': row['messages'], 'solution': row['solution']} for row in rows])
    tokenizer = AutoTokenizer.from_pretrained(flags['model'])
    model = AutoModelForCausalLM.from_pretrained(flags['model'], dtype=torch.float32)
    max_steps = int(flags['max_steps'])
    config = GRPOConfig(
        output_dir=str(out / 'output'), loss_type='dapo', num_generations=int(flags['num_generations']),
        per_device_train_batch_size=int(flags['per_device_train_batch_size']), gradient_accumulation_steps=1,
        steps_per_generation=int(flags['steps_per_generation']), num_iterations=int(flags['num_iterations']),
        max_completion_length=int(flags['max_completion_length']), temperature=float(flags['temperature']),
        beta=float(flags['beta']), epsilon=float(flags['epsilon']), epsilon_high=float(flags['epsilon_high']),
        learning_rate=float(flags['learning_rate']), lr_scheduler_type='constant',
        max_steps=max_steps, save_strategy='steps', save_steps=int(flags['save_steps']), save_only_model=True,
        seed=args.seed, use_cpu=True, logging_steps=1, report_to='none', bf16=False, fp16=False,
        dataloader_num_workers=0)
    common = dict(model=model, reward_funcs=[mod10_answer_reward], args=config, train_dataset=dataset,
                  processing_class=tokenizer)
    if args.algorithm == 'dapo':
        trainer = GRPOTrainer(**common)
    else:
        from swift_fipo import FIPOConfig, FIPOGRPOTrainer
        trainer = FIPOGRPOTrainer(**common, fipo=FIPOConfig.from_preset(PRESETS[args.algorithm]))
    began = time.time()
    trainer.train()
    train_seconds = time.time() - began
    logging = out / 'output' / 'logging.jsonl'
    with logging.open('w') as handle:
        for row in to_logging_rows(trainer.state.log_history, max_steps):
            handle.write(json.dumps(row) + '\n')
    sft = json.loads((study / 'sft' / 'sft.json').read_text())
    eval_file = out / 'eval.jsonl'
    eval_file.write_text(json.dumps({**sft['eval'], 'global_step': 0}) + '\n')
    subprocess.run([sys.executable, str(HERE / 'evaluate.py'), '--heldout', str(study / 'data' / 'heldout.jsonl'),
                    '--out', str(eval_file), str(out / 'output')], check=True,
                   env={**os.environ, 'OMP_NUM_THREADS': '1'})
    evaluation = [json.loads(line) for line in eval_file.read_text().splitlines()]
    result = {'engine': 'trl', 'algorithm': args.algorithm, 'seed': args.seed, 'command': shlex.join(sys.argv),
              'settings_from': flags, 'train_seconds': round(train_seconds, 1), 'eval': evaluation,
              'log_history': trainer.state.log_history}
    (out / 'result.json').write_text(json.dumps(result, indent=1) + '\n')
    print(f'{out}: greedy {evaluation[0]["heldout/greedy_accuracy"]:.3f} -> '
          f'{evaluation[-1]["heldout/greedy_accuracy"]:.3f} in {train_seconds:.0f} s of training')


if __name__ == '__main__':
    main()
