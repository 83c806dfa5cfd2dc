"""Left-to-right arithmetic mod 10: a reasoning task a 1M-parameter model learns on CPU.

A prompt is K single digits joined by ``+ - *``, e.g. ``3+4*2-5``. The value is computed left to right, each step
mod 10 (``3+4=7``, ``7*2=4``, ``4-5=9``). An answer either writes the chain ``3+4=7 7*2=4 4-5=9 #9`` or answers
directly ``#9``; only the number after ``#`` is graded. A model that writes the chain is right far more often than
one that answers directly, so the task rewards longer reasoning, as FIPO's paper setting does, and leaves RL room.

Prompt sets are drawn from one seeded stream of distinct expressions, held-out first, then RL, then SFT: the sets are
disjoint, and their contents do not depend on the sizes of the sets drawn after them.

    python examples/learn/task.py OUT_DIR [--seed 0] [--sft 20000] [--rl 4000] [--heldout 500]

writes OUT_DIR/{sft,rl,heldout}.jsonl in ms-swift's ``messages`` format (RL and held-out rows carry ``solution``).
"""

from __future__ import annotations

import argparse
import json
import random
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

SYSTEM_PROMPT = 'Compute left to right, mod 10.'
MODULUS = 10
OPERATORS = ('+', '-', '*')
# A chain step as the model writes it: digit, operator, digit, '=', digit.
STEP_PATTERN = re.compile(r'(\d)([+\-*])(\d)=(\d)')
# A graded answer: the completion ends with '#' and a number (trailing whitespace allowed).
ANSWER_PATTERN = re.compile(r'#(\d+)\s*$')


@dataclass(frozen=True)
class TaskConfig:
    """Difficulty knobs. More terms make direct answers harder (the chain's length grows with them)."""
    min_terms: int = 4
    max_terms: int = 7
    operators: tuple[str, ...] = field(default=OPERATORS)

    def __post_init__(self) -> None:
        if not 2 <= self.min_terms <= self.max_terms:
            raise ValueError(f'min_terms must be >= 2 and <= max_terms, got min_terms={self.min_terms}, '
                             f'max_terms={self.max_terms}')
        if not self.operators or any(op not in OPERATORS for op in self.operators):
            raise ValueError(f'operators must be a non-empty subset of {OPERATORS}, got {self.operators}')

    def distinct_expressions(self) -> int:
        """How many different prompts these knobs allow: 10 digits per term, an operator between terms."""
        operators = len(set(self.operators))
        return sum(10 ** terms * operators ** (terms - 1) for terms in range(self.min_terms, self.max_terms + 1))


def apply(left: int, operator: str, right: int) -> int:
    if operator == '+':
        return (left + right) % MODULUS
    if operator == '-':
        return (left - right) % MODULUS
    return (left * right) % MODULUS


def chain_steps(expression: str) -> list[tuple[int, str, int, int]]:
    """The steps ``(left, operator, right, result)`` of ``expression`` evaluated left to right mod 10."""
    digits, operators = [int(c) for c in expression[0::2]], expression[1::2]
    steps, value = [], digits[0]
    for operator, right in zip(operators, digits[1:], strict=False):
        result = apply(value, operator, right)
        steps.append((value, operator, right, result))
        value = result
    return steps


def solve(expression: str) -> int:
    steps = chain_steps(expression)
    return steps[-1][3] if steps else int(expression)


def chain_answer(expression: str) -> str:
    """The reasoning answer: every step, then ``#`` and the result."""
    steps = chain_steps(expression)
    return ' '.join(f'{a}{op}{b}={r}' for a, op, b, r in steps) + f' #{solve(expression)}'


def direct_answer(expression: str) -> str:
    return f'#{solve(expression)}'


def expressions(seed: int, config: TaskConfig = TaskConfig()) -> Iterator[str]:
    """An endless stream of distinct expressions, the same for the same seed and config."""
    rng = random.Random(seed)
    seen: set[str] = set()
    while True:
        terms = rng.randint(config.min_terms, config.max_terms)
        digits = [str(rng.randrange(MODULUS)) for _ in range(terms)]
        operators = [rng.choice(config.operators) for _ in range(terms - 1)]
        expression = digits[0] + ''.join(op + d for op, d in zip(operators, digits[1:], strict=False))
        if expression not in seen:
            seen.add(expression)
            yield expression


@dataclass(frozen=True)
class Splits:
    heldout: list[str]
    rl: list[str]
    sft: list[str]


def make_splits(seed: int = 0, sft: int = 20000, rl: int = 4000, heldout: int = 500,
                config: TaskConfig = TaskConfig()) -> Splits:
    """Disjoint prompt sets from one stream: held-out first, so it stays fixed whatever the other sizes."""
    for name, size in (('sft', sft), ('rl', rl), ('heldout', heldout)):
        if size < 0:
            raise ValueError(f'{name} must be >= 0, got {size}')
    available = config.distinct_expressions()
    if sft + rl + heldout > available:
        raise ValueError(f'sft + rl + heldout = {sft + rl + heldout} prompts asked for, but terms '
                         f'{config.min_terms}-{config.max_terms} over {len(config.operators)} operators give only '
                         f'{available} distinct expressions: ask for fewer or allow more terms')
    stream = expressions(seed, config)
    take = lambda n: [next(stream) for _ in range(n)]  # noqa: E731
    held = take(heldout)
    rl_set = take(rl)
    return Splits(heldout=held, rl=rl_set, sft=take(sft))


def prompt_messages(expression: str) -> list[dict[str, str]]:
    return [{'role': 'system', 'content': SYSTEM_PROMPT}, {'role': 'user', 'content': expression}]


def sft_row(expression: str, chain: bool) -> dict[str, Any]:
    answer = chain_answer(expression) if chain else direct_answer(expression)
    return {'messages': prompt_messages(expression) + [{'role': 'assistant', 'content': answer}]}


def rl_row(expression: str) -> dict[str, Any]:
    return {'messages': prompt_messages(expression), 'solution': str(solve(expression))}


# ---- the verifier -----------------------------------------------------------------------------------------------

def parse_answer(completion: str) -> int | None:
    """The graded number: the completion must hold exactly one '#' and end with '#<number>'; else None."""
    if completion.count('#') != 1:
        return None
    match = ANSWER_PATTERN.search(completion)
    return int(match.group(1)) if match else None


def is_correct(completion: str, solution: str | int) -> bool:
    answer = parse_answer(completion)
    return answer is not None and answer == int(solution)


def reward(completion: str, solution: str | int) -> float:
    """The RL reward: 1.0 for a right final answer, 0.0 for a wrong or malformed one. The chain is not graded."""
    return 1.0 if is_correct(completion, solution) else 0.0


def writes_chain(completion: str) -> bool:
    """Whether the completion reasons: at least one step ``a op b = r`` before the answer."""
    return STEP_PATTERN.search(completion.split('#', 1)[0]) is not None


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    with path.open('w') as handle:
        for row in rows:
            handle.write(json.dumps(row) + '\n')


def write_datasets(out_dir: Path, seed: int = 0, sft: int = 20000, rl: int = 4000, heldout: int = 500,
                   chain_share: float = 0.5, config: TaskConfig = TaskConfig()) -> dict[str, Path]:
    """Write sft.jsonl (a chain/direct mix, ``chain_share`` chains), rl.jsonl and heldout.jsonl; return their paths."""
    if not 0.0 <= chain_share <= 1.0:
        raise ValueError(f'chain_share must be in [0, 1], got {chain_share}')
    splits = make_splits(seed, sft, rl, heldout, config)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed + 1)
    paths = {'sft': out_dir / 'sft.jsonl', 'rl': out_dir / 'rl.jsonl', 'heldout': out_dir / 'heldout.jsonl'}
    write_jsonl(paths['sft'], [sft_row(e, rng.random() < chain_share) for e in splits.sft])
    write_jsonl(paths['rl'], [rl_row(e) for e in splits.rl])
    write_jsonl(paths['heldout'], [rl_row(e) for e in splits.heldout])
    (out_dir / 'task.json').write_text(json.dumps({'seed': seed, 'sft': sft, 'rl': rl, 'heldout': heldout,
                                                   'chain_share': chain_share, **asdict(config)}, indent=1) + '\n')
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('out_dir', type=Path)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--sft', type=int, default=20000, help='SFT prompts')
    parser.add_argument('--rl', type=int, default=4000, help='RL prompts')
    parser.add_argument('--heldout', type=int, default=500, help='held-out prompts')
    parser.add_argument('--chain_share', type=float, default=0.5, help='share of SFT answers that write the chain')
    parser.add_argument('--min_terms', type=int, default=4)
    parser.add_argument('--max_terms', type=int, default=7)
    args = parser.parse_args()
    try:
        config = TaskConfig(args.min_terms, args.max_terms)
        paths = write_datasets(args.out_dir, args.seed, args.sft, args.rl, args.heldout, args.chain_share, config)
    except ValueError as error:
        parser.error(str(error))
    for name, path in paths.items():
        print(f'{name}: {path}')


if __name__ == '__main__':
    main()
