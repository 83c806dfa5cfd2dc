"""The learning study: SFT once, then DAPO vs FIPO (swift preset, paper-7b preset) x paired seeds, evaluated on the
held-out set, summarised with paired statistics and figures.

    python examples/learn/study.py --out DIR [--seeds 8] [--jobs 2] [--rl_steps 30] [--eval_every 10]

Every step is the real command line: ``swift sft`` (full, from random init) and ``swift rlhf --rlhf_type grpo``
from the SFT checkpoint, identical flags but the loss, the same ``--seed`` (hence the same data order) for the three
algorithms of a seed. Checkpoints saved every ``--eval_every`` steps are evaluated by evaluate.py. Resumable: a run
counts as done when its ``result.json`` exists; a killed study restarts the run it stopped in. Runs side by side
(``--jobs``), one torch thread each. Layout of DIR:

    data/ init/ sft/ (sft.json, eval.jsonl)   runs/<algorithm>-s<seed>/ (output/, eval.jsonl, result.json)
    summary.json summary.md *.png study.log
"""

from __future__ import annotations

import argparse
import concurrent.futures
import importlib.metadata
import json
import math
import os
import platform
import shlex
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import build_model  # noqa: E402
import task  # noqa: E402
from reward import REWARD_NAME  # noqa: E402

# The loss flags of each compared algorithm; everything else is shared.
ALGORITHMS: dict[str, list[str]] = {
    'dapo': ['--loss_type', 'dapo'],
    'fipo-swift': ['--loss_type', 'fipo'],
    'fipo-paper-7b': ['--loss_type', 'fipo', '--fipo_preset', 'paper-7b'],
}
MODEL_FLAGS = ['--model_type', 'qwen2', '--template', 'qwen', '--check_model', 'false', '--tuner_type', 'full',
               '--torch_dtype', 'float32', '--use_cpu', 'true', '--report_to', 'none', '--dataloader_num_workers',
               '0', '--dataset_num_proc', '1', '--add_version', 'false', '--logging_steps', '1']
ENV = {'HF_HUB_OFFLINE': '1', 'MODELSCOPE_OFFLINE': '1', 'TOKENIZERS_PARALLELISM': 'false', 'OMP_NUM_THREADS': '1',
       'MKL_NUM_THREADS': '1', 'PYTHONUNBUFFERED': '1'}
PACKAGES = ['torch', 'ms-swift', 'transformers', 'trl', 'swift-fipo']
HEADLINE = 'heldout/greedy_accuracy'
_print_lock = threading.Lock()


def say(log: Path, text: str) -> None:
    line = f'{time.strftime("%H:%M:%S")} {text}'
    with _print_lock:
        print(line, flush=True)
        with log.open('a') as handle:
            handle.write(line + '\n')


def versions() -> dict[str, str]:
    found = {}
    for name in PACKAGES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = 'not installed'
    found['python'] = platform.python_version()
    return found


def machine() -> dict[str, Any]:
    model = platform.processor() or 'unknown'
    try:
        for line in Path('/proc/cpuinfo').read_text().splitlines():
            if line.startswith('model name'):
                model = line.split(':', 1)[1].strip()
                break
    except OSError:
        pass
    memory = None
    try:
        memory = round(os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        pass
    return {'cores': os.cpu_count(), 'cpu_model': model, 'memory_gib': memory, 'platform': platform.platform(),
            'load_average': list(os.getloadavg())}


def swift_binary() -> str:
    candidate = Path(sys.executable).parent / 'swift'
    return str(candidate) if candidate.exists() else 'swift'


def run_logged(command: list[str], log_file: Path, env: dict[str, str]) -> int:
    with log_file.open('a') as handle:
        handle.write('$ ' + shlex.join(command) + '\n')
        handle.flush()
        process = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, env={**os.environ, **env},
                                 check=False)
    return process.returncode


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def evaluate_command(args: argparse.Namespace, paths: list[Path], out: Path, step: int = 0) -> list[str]:
    return [sys.executable, str(HERE / 'evaluate.py'), '--heldout', str(args.out / 'data' / 'heldout.jsonl'),
            '--out', str(out), '--step', str(step), '--samples', str(args.eval_samples), *map(str, paths)]


# ---- SFT ---------------------------------------------------------------------------------------------------------

def sft_command(args: argparse.Namespace, model: Path, steps: int, lr: float, output: Path) -> list[str]:
    return [swift_binary(), 'sft', '--model', str(model), *MODEL_FLAGS,
            '--dataset', str(args.out / 'data' / 'sft.jsonl'), '--split_dataset_ratio', '0',
            '--per_device_train_batch_size', str(args.sft_batch), '--gradient_accumulation_steps', '1',
            '--learning_rate', str(lr), '--lr_scheduler_type', 'cosine', '--warmup_ratio', '0.03',
            '--max_steps', str(steps), '--max_length', '128', '--gradient_checkpointing', 'false',
            '--save_strategy', 'steps', '--save_steps', str(steps), '--save_only_model', 'true',
            '--seed', '0', '--output_dir', str(output)]


def sft_stage(args: argparse.Namespace, log: Path, name: str, model: Path, steps: int, lr: float) -> dict[str, Any]:
    """One ``swift sft`` run from ``model``, once: done when sft/<name>.json exists; a killed one starts again."""
    sft_dir = args.out / 'sft'
    record = sft_dir / f'{name}.json'
    if record.exists():
        return json.loads(record.read_text())
    output = sft_dir / f'output-{name}'
    if output.exists():
        shutil.rmtree(output)
    output.mkdir(parents=True)
    command = sft_command(args, model, steps, lr, output)
    say(log, f'SFT {name}: {steps} steps, batch {args.sft_batch}, lr {lr} (log {output / "sft.log"})')
    began = time.time()
    if run_logged(command, output / 'sft.log', {**ENV, 'OMP_NUM_THREADS': str(args.sft_threads)}) != 0:
        raise SystemExit(f'swift sft failed; see {output / "sft.log"}')
    seconds = time.time() - began
    from evaluate import checkpoints
    found = checkpoints(output)
    if not found:
        raise SystemExit(f'swift sft saved no checkpoint under {output}')
    checkpoint = found[-1][1]
    evaluation_file = output / 'eval.jsonl'
    if run_logged(evaluate_command(args, [checkpoint], evaluation_file), output / 'eval.log', ENV) != 0:
        raise SystemExit(f'evaluation of the SFT model failed; see {output / "eval.log"}')
    evaluation = read_jsonl(evaluation_file)[-1]
    result = {'checkpoint': str(checkpoint), 'command': shlex.join(command), 'seconds': round(seconds, 1),
              'threads': args.sft_threads, 'eval': evaluation, 'versions': versions(), 'machine': machine()}
    record.write_text(json.dumps(result, indent=1) + '\n')
    say(log, f'SFT {name} done in {seconds:.0f} s: held-out greedy {evaluation[HEADLINE]:.3f} (chains '
        f'{evaluation["heldout/chain_accuracy"]:.3f}, direct {evaluation["heldout/direct_accuracy"]:.3f}), chain share '
        f'{evaluation["heldout/chain_share"]:.2f}, length {evaluation["heldout/mean_length"]:.1f}')
    return result


def prepare(args: argparse.Namespace, log: Path) -> dict[str, Any]:
    """Data, initial model, SFT (a first stage, then an optional continued stage) and its evaluation; sft.json."""
    record = args.out / 'sft' / 'sft.json'
    if record.exists():
        return json.loads(record.read_text())
    data = args.out / 'data'
    if not (data / 'task.json').exists():
        task.write_datasets(data, seed=args.task_seed, sft=args.sft_prompts, rl=args.rl_prompts, heldout=args.heldout)
    if not (args.out / 'init' / 'config.json').exists():
        build_model.save(args.out / 'init')
    stages = [sft_stage(args, log, 'stage1', args.out / 'init', args.sft_steps, args.sft_lr)]
    if args.sft_more_steps:
        stages.append(sft_stage(args, log, 'stage2', Path(stages[0]['checkpoint']), args.sft_more_steps,
                                args.sft_more_lr))
    result = {**stages[-1], 'seconds': round(sum(stage['seconds'] for stage in stages), 1),
              'command': ' && '.join(stage['command'] for stage in stages), 'stages': stages}
    record.write_text(json.dumps(result, indent=1) + '\n')
    return result


# ---- RL runs -----------------------------------------------------------------------------------------------------

def rl_command(args: argparse.Namespace, checkpoint: str, algorithm: str, seed: int, output: Path) -> list[str]:
    return [swift_binary(), 'rlhf', '--rlhf_type', 'grpo', *ALGORITHMS[algorithm], '--model', checkpoint,
            *MODEL_FLAGS, '--dataset', str(args.out / 'data' / 'rl.jsonl'), '--split_dataset_ratio', '0',
            '--external_plugins', str(HERE / 'reward.py'), '--reward_funcs', REWARD_NAME,
            '--num_generations', str(args.generations),
            '--per_device_train_batch_size', str(args.generations * args.prompts_per_step),
            '--gradient_accumulation_steps', '1', '--steps_per_generation', str(args.steps_per_generation),
            '--num_iterations', '1', '--max_completion_length', str(evaluate_max_tokens()),
            '--temperature', '1.0', '--beta', '0', '--epsilon', '0.2', '--epsilon_high', '0.28',
            '--learning_rate', str(args.rl_lr), '--lr_scheduler_type', 'constant', '--warmup_ratio', '0',
            '--max_steps', str(args.rl_steps), '--save_strategy', 'steps', '--save_steps', str(args.eval_every),
            '--save_only_model', 'true', '--seed', str(seed), '--output_dir', str(output)]


def evaluate_max_tokens() -> int:
    from evaluate import MAX_NEW_TOKENS
    return MAX_NEW_TOKENS


def training_summary(logging_rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Means over the logged training steps (first / last quarter for reward and length), fipo/* extremes."""
    steps = [row for row in logging_rows if 'reward' in row or any(key.startswith('fipo/') for key in row)]
    if not steps:
        return {}
    quarter = max(1, len(steps) // 4)

    def mean(rows: list[dict[str, Any]], key: str) -> float | None:
        values = [row[key] for row in rows if isinstance(row.get(key), (int, float)) and math.isfinite(row[key])]
        return sum(values) / len(values) if values else None

    summary: dict[str, Any] = {'logged_steps': len(steps)}
    for key in ('reward', 'completions/mean_length'):
        summary[f'{key} first quarter'] = mean(steps[:quarter], key)
        summary[f'{key} last quarter'] = mean(steps[-quarter:], key)
    for key in sorted({key for row in steps for key in row if key.startswith('fipo/')}):
        values = [row[key] for row in steps if isinstance(row.get(key), (int, float)) and math.isfinite(row[key])]
        if values:
            summary[f'{key} mean'] = sum(values) / len(values)
            summary[f'{key} min'] = min(values)
            summary[f'{key} max'] = max(values)
    train = [row for row in logging_rows if 'train_runtime' in row]
    if train:
        summary['train_runtime'] = train[-1]['train_runtime']
    return summary


def run_one(args: argparse.Namespace, sft: dict[str, Any], algorithm: str, seed: int) -> dict[str, Any]:
    run_dir = args.out / 'runs' / f'{algorithm}-s{seed}'
    record = run_dir / 'result.json'
    if record.exists():
        return json.loads(record.read_text())
    if run_dir.exists():
        shutil.rmtree(run_dir)  # killed half-way: start this run again
    run_dir.mkdir(parents=True)
    output = run_dir / 'output'
    command = rl_command(args, sft['checkpoint'], algorithm, seed, output)
    began = time.time()
    load_before = list(os.getloadavg())
    if run_logged(command, run_dir / 'train.log', ENV) != 0:
        raise RuntimeError(f'swift rlhf failed; see {run_dir / "train.log"}')
    train_seconds = time.time() - began
    eval_file = run_dir / 'eval.jsonl'
    # The start point of every run is the SFT model: its evaluation is the row at step 0.
    eval_file.write_text(json.dumps({**sft['eval'], 'global_step': 0}) + '\n')
    if run_logged(evaluate_command(args, [output], eval_file), run_dir / 'eval.log', ENV) != 0:
        raise RuntimeError(f'evaluation failed; see {run_dir / "eval.log"}')
    result = {'algorithm': algorithm, 'seed': seed, 'command': shlex.join(command), 'source_commit': args.source_commit,
              'env': {key: ENV[key] for key in ('OMP_NUM_THREADS', )}, 'versions': versions(), 'machine': machine(),
              'load_average_at_start': load_before, 'train_seconds': round(train_seconds, 1),
              'total_seconds': round(time.time() - began, 1), 'eval': read_jsonl(eval_file),
              'training': training_summary(read_jsonl(output / 'logging.jsonl'))}
    record.write_text(json.dumps(result, indent=1) + '\n')
    return result


# ---- statistics --------------------------------------------------------------------------------------------------

def mean_std(values: list[float]) -> tuple[float, float]:
    if not values:
        return float('nan'), float('nan')
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, float('nan')
    return mean, math.sqrt(sum((v - mean)**2 for v in values) / (len(values) - 1))


def sign_test(differences: list[float]) -> float:
    """Two-sided exact sign test p-value (ties dropped)."""
    positive = sum(d > 0 for d in differences)
    n = positive + sum(d < 0 for d in differences)
    if n == 0:
        return 1.0
    low = min(positive, n - positive)
    tail = sum(math.comb(n, k) for k in range(low + 1)) / 2**n
    return min(1.0, 2 * tail)


def paired_test(differences: list[float]) -> dict[str, Any]:
    mean, std = mean_std(differences)
    n = len(differences)
    out: dict[str, Any] = {'n': n, 'mean': mean, 'std': std, 'wins': sum(d > 0 for d in differences),
                           'losses': sum(d < 0 for d in differences), 'sign_test_p': sign_test(differences)}
    if n >= 2 and std > 0:
        out['t'] = mean / (std / math.sqrt(n))
        out['ci95_halfwidth'] = None
        try:
            from scipy import stats
            out['t_test_p'] = float(stats.ttest_1samp(differences, 0.0).pvalue)
            out['ci95_halfwidth'] = float(stats.t.ppf(0.975, n - 1) * std / math.sqrt(n))
            if any(d != 0 for d in differences):
                out['wilcoxon_p'] = float(stats.wilcoxon(differences).pvalue)
        except ImportError:
            pass
    return out


def per_run_metrics(result: dict[str, Any], threshold: float) -> dict[str, Any]:
    rows = sorted(result['eval'], key=lambda row: row['global_step'])
    start, final = rows[0], rows[-1]
    peak = max(rows, key=lambda row: row[HEADLINE])
    reached = next((row['global_step'] for row in rows if row[HEADLINE] >= threshold), None)
    training = result.get('training', {})
    return {
        'start': start[HEADLINE], 'final': final[HEADLINE], 'peak': peak[HEADLINE], 'peak_step': peak['global_step'],
        'pass@1': final['heldout/pass@1'], 'length': final['heldout/mean_length'],
        'chain_share': final['heldout/chain_share'], 'steps_to_threshold': reached,
        'weight_mean': training.get('fipo/influence_weight_mean mean'),
        'weight_max': training.get('fipo/influence_weight_max max'),
        'clipped_high': training.get('fipo/clipped_high_ratio mean'),
        'train_seconds': result['train_seconds'], 'total_seconds': result['total_seconds'],
    }


def summarize(args: argparse.Namespace, sft: dict[str, Any], results: list[dict[str, Any]],
              log: Path) -> dict[str, Any]:
    threshold = args.threshold if args.threshold is not None else round(sft['eval'][HEADLINE] + 0.10, 3)
    by_algorithm: dict[str, dict[int, dict[str, Any]]] = {}
    for result in results:
        by_algorithm.setdefault(result['algorithm'], {})[result['seed']] = per_run_metrics(result, threshold)
    table: dict[str, Any] = {}
    for algorithm, runs in by_algorithm.items():
        row: dict[str, Any] = {'seeds': sorted(runs)}
        for key in ('start', 'final', 'peak', 'pass@1', 'length', 'chain_share', 'weight_mean', 'weight_max',
                    'clipped_high', 'train_seconds'):
            values = [run[key] for run in runs.values() if run[key] is not None]
            row[key] = mean_std(values) if values else None
        reached = [run['steps_to_threshold'] for run in runs.values()]
        row['reached_threshold'] = sum(step is not None for step in reached)
        hit = [step for step in reached if step is not None]
        row['steps_to_threshold_median'] = sorted(hit)[len(hit) // 2] if hit else None
        table[algorithm] = row
    comparisons: dict[str, Any] = {}
    baseline = by_algorithm.get('dapo', {})
    for algorithm, runs in by_algorithm.items():
        if algorithm == 'dapo':
            continue
        seeds = sorted(set(runs) & set(baseline))
        comparisons[f'{algorithm} - dapo'] = {
            key: {**paired_test([runs[s][key] - baseline[s][key] for s in seeds]), 'seeds': seeds}
            for key in ('final', 'peak', 'length', 'chain_share', 'pass@1')
        }
    summary = {'threshold': threshold, 'sft': {k: sft[k] for k in ('checkpoint', 'seconds', 'eval', 'command')},
               'table': table, 'paired': comparisons, 'per_run': {a: r for a, r in by_algorithm.items()},
               'settings': {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
               'machine': machine(), 'versions': versions()}
    (args.out / 'summary.json').write_text(json.dumps(summary, indent=1) + '\n')
    (args.out / 'summary.md').write_text(markdown(summary))
    say(log, 'summary: ' + str(args.out / 'summary.md'))
    print(markdown(summary), flush=True)
    return summary


def _pm(value: tuple[float, float] | None, scale: float = 100.0, digits: int = 1) -> str:
    if value is None:
        return 'n/a'
    mean, std = value
    return f'{mean * scale:.{digits}f} ± {std * scale:.{digits}f}'


def markdown(summary: dict[str, Any]) -> str:
    sft = summary['sft']['eval']
    lines = [f'SFT model (start of every run): held-out greedy {100 * sft[HEADLINE]:.1f}%, pass@1 '
             f'{100 * sft["heldout/pass@1"]:.1f}%, mean length {sft["heldout/mean_length"]:.1f} tokens, chains '
             f'{100 * sft["heldout/chain_share"]:.0f}%.', '',
             f'| algorithm | seeds | greedy final % | greedy peak % | pass@1 final % | length final | chains final % | '
             f'reached {100 * summary["threshold"]:.0f}% (median step) | mean FIPO weight | max FIPO weight | '
             f'train s/run |', '|' + '---|' * 11]
    for algorithm, row in summary['table'].items():
        weight = _pm(row['weight_mean'], 1, 4) if row['weight_mean'] else '-'
        top = _pm(row['weight_max'], 1, 3) if row['weight_max'] else '-'
        lines.append(f'| {algorithm} | {len(row["seeds"])} | {_pm(row["final"])} | {_pm(row["peak"])} | '
                     f'{_pm(row["pass@1"])} | {_pm(row["length"], 1)} | {_pm(row["chain_share"])} | '
                     f'{row["reached_threshold"]}/{len(row["seeds"])} ({row["steps_to_threshold_median"]}) | '
                     f'{weight} | {top} | {row["train_seconds"][0]:.0f} |')
    lines += ['', '| paired difference (points) | metric | mean ± sd | 95% CI ± | wins/losses | t-test p | '
              'Wilcoxon p | sign test p |', '|---|---|---|---|---|---|---|---|']
    for name, metrics in summary['paired'].items():
        for key, test in metrics.items():
            scale = 1 if key == 'length' else 100
            ci = test.get('ci95_halfwidth')
            lines.append(f'| {name} | {key} | {test["mean"] * scale:+.2f} ± {test["std"] * scale:.2f} | '
                         f'{"n/a" if ci is None else f"{ci * scale:.2f}"} | {test["wins"]}/{test["losses"]} | '
                         f'{test.get("t_test_p", float("nan")):.3f} | {test.get("wilcoxon_p", float("nan")):.3f} | '
                         f'{test["sign_test_p"]:.3f} |')
    return '\n'.join(lines) + '\n'


# ---- figures -----------------------------------------------------------------------------------------------------

def figures(args: argparse.Namespace, results: list[dict[str, Any]], log: Path) -> None:
    """The grouped plot of swift-fipo (mean line and band per algorithm), one figure with every panel."""
    groups: dict[str, list[str]] = {}
    for result in results:
        groups.setdefault(result['algorithm'], []).append(
            str(args.out / 'runs' / f'{result["algorithm"]}-s{result["seed"]}'))
    command = [str(Path(sys.executable).parent / 'swift-fipo'), 'plot']
    for algorithm, dirs in groups.items():
        command += ['--group', algorithm, *sorted(dirs)]
    command += ['-o', str(args.out / 'study.png')]
    code = run_logged(command, args.out / 'plot.log', ENV)
    say(log, f'figure: {args.out / "study.png"}' if code == 0 else f'swift-fipo plot failed; see {args.out}/plot.log')


# ---- main --------------------------------------------------------------------------------------------------------

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--out', type=Path, required=True, help='study directory (resumes when it exists)')
    parser.add_argument('--seeds', type=int, default=8, help='paired seeds per algorithm (>= 1)')
    parser.add_argument('--first_seed', type=int, default=1)
    parser.add_argument('--algorithms', nargs='+', default=list(ALGORITHMS), choices=list(ALGORITHMS))
    parser.add_argument('--jobs', type=int, default=2, help='runs side by side, one torch thread each')
    parser.add_argument('--rl_steps', type=int, default=30, help='optimizer steps per RL run')
    parser.add_argument('--eval_every', type=int, default=10, help='save and evaluate every K steps')
    parser.add_argument('--prompts_per_step', type=int, default=4)
    parser.add_argument('--generations', type=int, default=8)
    parser.add_argument('--steps_per_generation', type=int, default=5,
                        help='optimizer steps per rollout (gradient accumulation is 1): off-policy reuse')
    parser.add_argument('--rl_lr', type=float, default=1e-4)
    parser.add_argument('--sft_steps', type=int, default=600)
    parser.add_argument('--sft_batch', type=int, default=64)
    parser.add_argument('--sft_lr', type=float, default=2e-3)
    parser.add_argument('--sft_more_steps', type=int, default=400,
                        help='a second SFT stage continued from the first (0: none)')
    parser.add_argument('--sft_more_lr', type=float, default=1e-3)
    parser.add_argument('--sft_threads', type=int, default=1)
    parser.add_argument('--sft_prompts', type=int, default=20000)
    parser.add_argument('--rl_prompts', type=int, default=4000)
    parser.add_argument('--heldout', type=int, default=500)
    parser.add_argument('--task_seed', type=int, default=0)
    parser.add_argument('--eval_samples', type=int, default=1, help='sampled answers per prompt for pass@1')
    parser.add_argument('--threshold', type=float, default=None,
                        help='held-out greedy accuracy for "steps to reach" (default: SFT accuracy + 0.10)')
    parser.add_argument('--sft_only', action='store_true', help='stop after SFT and its evaluation')
    parser.add_argument('--summarize_only', action='store_true',
                        help='no training: summary and figures of the runs already done')
    parser.add_argument('--source_commit', default=None, help='recorded in every result: the swift-fipo commit')
    args = parser.parse_args()
    if args.sft_more_steps < 0:
        parser.error(f'--sft_more_steps must be >= 0, got {args.sft_more_steps}')
    for name in ('seeds', 'jobs', 'rl_steps', 'eval_every', 'prompts_per_step', 'sft_steps', 'sft_batch',
                 'steps_per_generation', 'sft_threads'):
        if getattr(args, name) < 1:
            parser.error(f'--{name} must be >= 1, got {getattr(args, name)}')
    if args.generations < 2:
        parser.error(f'--generations must be >= 2 (GRPO compares completions of one prompt), got {args.generations}')
    if args.rl_steps % args.eval_every:
        parser.error(f'--rl_steps ({args.rl_steps}) must be a multiple of --eval_every ({args.eval_every})')
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    log = args.out / 'study.log'
    say(log, f'study {args.out}: {shlex.join(sys.argv)}')
    if args.summarize_only:
        sft = json.loads((args.out / 'sft' / 'sft.json').read_text())
        done = sorted(args.out.glob('runs/*/result.json'))
        results = [json.loads(path.read_text()) for path in done]
        results = [r for r in results if r['algorithm'] in args.algorithms]
        results.sort(key=lambda result: (result['seed'], args.algorithms.index(result['algorithm'])))
        summarize(args, sft, results, log)
        figures(args, results, log)
        return
    sft = prepare(args, log)
    if args.sft_only:
        return
    plan = [(algorithm, seed) for seed in range(args.first_seed, args.first_seed + args.seeds)
            for algorithm in args.algorithms]
    started = time.time()
    results: list[dict[str, Any]] = []
    failed: list[str] = []

    def work(index: int, algorithm: str, seed: int) -> None:
        began = time.time()
        done_before = (args.out / 'runs' / f'{algorithm}-s{seed}' / 'result.json').exists()
        try:
            result = run_one(args, sft, algorithm, seed)
        except RuntimeError as error:
            failed.append(f'{algorithm}-s{seed}')
            say(log, f'run {index}/{len(plan)} {algorithm} seed {seed}: FAILED after {time.time() - began:.0f} s: '
                f'{error}')
            return
        results.append(result)
        rows = sorted(result['eval'], key=lambda row: row['global_step'])
        peak = max(rows, key=lambda row: row[HEADLINE])
        weight = result['training'].get('fipo/influence_weight_mean mean')
        say(log, f'run {index}/{len(plan)} {algorithm} seed {seed}: '
            f'{"already done" if done_before else f"{time.time() - began:.0f} s"}, greedy '
            f'{rows[0][HEADLINE]:.3f} -> {rows[-1][HEADLINE]:.3f} (peak {peak[HEADLINE]:.3f} at step '
            f'{peak["global_step"]}), length {rows[-1]["heldout/mean_length"]:.1f}, chains '
            f'{rows[-1]["heldout/chain_share"]:.2f}' + ('' if weight is None else f', mean FIPO weight {weight:.4f}')
            + f' [study {time.time() - started:.0f} s]')

    with concurrent.futures.ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = [pool.submit(work, index, algorithm, seed) for index, (algorithm, seed) in enumerate(plan, 1)]
        for future in futures:
            future.result()
    results.sort(key=lambda result: (result['seed'], args.algorithms.index(result['algorithm'])))
    summarize(args, sft, results, log)
    figures(args, results, log)
    say(log, f'study done in {time.time() - started:.0f} s of RL' + (f'; failed: {failed}' if failed else ''))
    if failed:
        raise SystemExit(1)


if __name__ == '__main__':
    main()
