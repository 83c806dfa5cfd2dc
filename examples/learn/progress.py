"""Console lines for the quick run (examples/learn/quick_run.sh): one per logged training step, and the final result.

    python examples/learn/progress.py follow LOGGING_JSONL PID KEY [KEY ...]
        prints one line per row of ms-swift's logging.jsonl while process PID runs (and the rows left after it)
    python examples/learn/progress.py result BEFORE_EVAL_JSONL AFTER_EVAL_JSONL
        prints the held-out chain share and length, then ``held-out accuracy: X% -> Y%`` (the last line)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path
from typing import Any

ACCURACY = 'heldout/greedy_accuracy'
# Short column names for the keys the quick run follows.
LABELS = {'loss': 'loss', 'token_acc': 'token acc', 'reward': 'reward', 'completions/mean_length': 'length',
          'fipo/future_kl_mean': 'FutureKL', 'fipo/influence_weight_mean': 'w mean', 'fipo/influence_weight_max':
          'w max', 'fipo/clipped_high_ratio': 'clip hi', 'fipo/clipped_low_ratio': 'clip lo'}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _cell(value: Any) -> str:
    if isinstance(value, (int, float)) and math.isfinite(value):
        return f'{value:>10.4f}'
    return f'{"-":>10}'


def format_row(row: dict[str, Any], keys: list[str]) -> str:
    return f'{row.get("global_step/max_steps", "?"):>9}' + ''.join(_cell(row.get(key)) for key in keys)


def follow(log: Path, pid: int, keys: list[str], poll_seconds: float = 2.0) -> None:
    """Print each logged step of a running ms-swift process as its row reaches logging.jsonl."""
    print(f'{"step":>9}' + ''.join(f'{LABELS.get(key, key)[:10]:>10}' for key in keys), flush=True)
    printed = 0
    while True:
        running = _alive(pid)  # read before the file, so the rows written just before the exit are printed
        text = log.read_text() if log.exists() else ''
        lines = text.splitlines()
        complete = lines if text.endswith('\n') else lines[:-1]  # a row being written waits for the next poll
        for line in complete[printed:]:
            row = json.loads(line)
            if 'global_step/max_steps' in row and any(key in row for key in keys):
                print(format_row(row, keys), flush=True)
        printed = len(complete)
        if not running:
            return
        time.sleep(poll_seconds)


def last_row(path: Path) -> dict[str, Any]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if not rows or ACCURACY not in rows[-1]:
        raise SystemExit(f'no held-out evaluation in {path}')
    return rows[-1]


def result(before_file: Path, after_file: Path) -> str:
    before, after = last_row(before_file), last_row(after_file)
    prompts = int(after.get('heldout/prompts', 0))
    print(f'held-out chains written: {100 * before["heldout/chain_share"]:.0f}% -> '
          f'{100 * after["heldout/chain_share"]:.0f}%, mean length {before["heldout/mean_length"]:.1f} -> '
          f'{after["heldout/mean_length"]:.1f} tokens ({prompts} prompts, greedy)')
    line = f'held-out accuracy: {100 * before[ACCURACY]:.1f}% -> {100 * after[ACCURACY]:.1f}%'
    print(line, flush=True)
    return line


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest='command', required=True)
    follow_parser = commands.add_parser('follow', help='print the logged steps of a running ms-swift process')
    follow_parser.add_argument('log', type=Path)
    follow_parser.add_argument('pid', type=int)
    follow_parser.add_argument('keys', nargs='+')
    result_parser = commands.add_parser('result', help='the held-out accuracy before and after')
    result_parser.add_argument('before', type=Path)
    result_parser.add_argument('after', type=Path)
    args = parser.parse_args()
    if args.command == 'follow':
        follow(args.log, args.pid, args.keys)
    else:
        result(args.before, args.after)


if __name__ == '__main__':
    main()
