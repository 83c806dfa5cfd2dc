"""Which tokens of the mod-10 chains FIPO reweights: a summary of a run's ``fipo_tokens.jsonl``.

    python examples/learn/token_weights.py RUN_OUTPUT_DIR --steps_per_rollout 5

reads the per-token values ``--fipo_log_tokens`` wrote and prints, over the reused (off-policy) steps only, the mean
influence weight and Future-KL by kind of token (operand, operator, '=', step result, '#', answer, end of turn) and
by position in the completion (quarters). The first optimizer step of each rollout is on-policy (weights exactly 1)
and is left out; the script checks that it is.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

CAP = 1.2  # the swift preset's upper weight bound


def kind_of(text: str, previous: str, after_hash: bool) -> str:
    if text == '#':
        return '#'
    if after_hash and text.isdigit():
        return 'answer digit'
    if text.isdigit():
        return 'step result digit' if previous == '=' else 'operand digit'
    if text in ('+', '-', '*'):
        return 'operator'
    if text in ('=', ' '):
        return repr(text)
    if '<|im_end|>' in text:
        return 'end of turn'
    return 'other'


def summarize(rows: list[dict], steps_per_rollout: int) -> tuple[dict, dict, int]:
    by_kind: dict[str, list[tuple[float, float]]] = defaultdict(list)
    by_quarter: dict[int, list[tuple[float, float]]] = defaultdict(list)
    reused = 0
    for row in rows:
        on_policy = (row['step'] - 1) % steps_per_rollout == 0
        tokens = row['tokens']
        if on_policy:
            if any(token['weight'] != 1 for token in tokens):
                raise SystemExit(f'step {row["step"]} is a rollout\'s first step but has weights other than 1: '
                                 f"is --steps_per_rollout {steps_per_rollout} the run's steps_per_generation?")
            continue
        reused += 1
        previous, after_hash = '', False
        for position, token in enumerate(tokens):
            text = token['text']
            kind = kind_of(text, previous, after_hash)
            after_hash = after_hash or kind == '#'
            value = (token['weight'], token['future_kl'])
            by_kind[kind].append(value)
            by_quarter[min(3, 4 * position // len(tokens))].append(value)
            previous = text
    return by_kind, by_quarter, reused


def _line(label: str, values: list[tuple[float, float]]) -> str:
    weights = [weight for weight, _ in values]
    mean_weight = sum(weights) / len(weights)
    mean_future_kl = sum(future_kl for _, future_kl in values) / len(values)
    at_cap = sum(weight >= CAP - 1e-6 for weight in weights) / len(weights)
    return f'| {label} | {len(values)} | {mean_weight:.3f} | {mean_future_kl:+.3f} | {at_cap:.1%} |'


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('run_output_dir', type=Path, help='the directory holding fipo_tokens.jsonl')
    parser.add_argument('--steps_per_rollout', type=int, required=True,
                        help='optimizer steps per rollout (ms-swift: steps_per_generation / gradient accumulation)')
    args = parser.parse_args()
    if args.steps_per_rollout < 1:
        parser.error('--steps_per_rollout must be >= 1')
    path = args.run_output_dir / 'fipo_tokens.jsonl'
    if not path.is_file():
        parser.error(f'no fipo_tokens.jsonl in {args.run_output_dir} (train with --fipo_log_tokens N)')
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    by_kind, by_quarter, reused = summarize(rows, args.steps_per_rollout)
    print(f'{reused} completions of reused steps\n')
    print('| token | count | mean weight | mean Future-KL | at the cap |\n|---|---|---|---|---|')
    for kind, values in sorted(by_kind.items(), key=lambda item: -len(item[1])):
        print(_line(kind, values))
    print('\n| position in the completion | count | mean weight | mean Future-KL | at the cap |\n|---|---|---|---|---|')
    for quarter in sorted(by_quarter):
        print(_line(f'quarter {quarter + 1}', by_quarter[quarter]))
    return 0


if __name__ == '__main__':
    sys.exit(main())
