"""Held-out evaluation of a policy on the mod-10 task: greedy accuracy, sampled pass@1, length, share of chains.

    python examples/learn/evaluate.py --heldout DATA/heldout.jsonl MODEL_OR_RUN_DIR [...] [--out eval.jsonl]

A directory holding ``checkpoint-N`` folders (an ms-swift output dir) is evaluated checkpoint by checkpoint, each
row tagged ``global_step: N``; a model directory is evaluated once (``--step``, default 0). Rows are appended to
``--out`` as JSON lines with keys ``heldout/...``, the file ``swift-fipo plot`` reads beside logging.jsonl.

Generation is Hugging Face ``generate`` in batches, on the prompt ms-swift's ``qwen`` template builds for these
rows (the model's ChatML chat template, checked equal in tests/test_learn_task.py); ms-swift's PtEngine would wrap
the same ``generate`` call with tens of seconds of imports per process.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from task import is_correct, writes_chain  # noqa: E402

# The RL runs sample at temperature 1.0 with no top-k / top-p cut: pass@1 is measured the same way.
RL_TEMPERATURE = 1.0
MAX_NEW_TOKENS = 48
CHECKPOINT = re.compile(r'checkpoint-(\d+)$')


def load_rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def load_policy(model_dir: Path) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.padding_side = 'left'
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    return model, tokenizer


@torch.no_grad()
def generate(model: Any, tokenizer: Any, rows: list[dict[str, Any]], sample: bool, temperature: float = RL_TEMPERATURE,
             max_new_tokens: int = MAX_NEW_TOKENS, batch_size: int = 256, seed: int = 0) -> list[tuple[str, int]]:
    """(completion text, completion length in tokens) per row; the end-of-turn token ends and is not counted."""
    prompts = [tokenizer.apply_chat_template(row['messages'], tokenize=False, add_generation_prompt=True)
               for row in rows]
    end = tokenizer.convert_tokens_to_ids('<|im_end|>')
    torch.manual_seed(seed)
    results: list[tuple[str, int]] = []
    for start in range(0, len(prompts), batch_size):
        batch = tokenizer(prompts[start:start + batch_size], return_tensors='pt', padding=True,
                          add_special_tokens=False)
        options = dict(do_sample=True, temperature=temperature, top_k=0, top_p=1.0) if sample else dict(
            do_sample=False)
        output = model.generate(**batch, max_new_tokens=max_new_tokens, eos_token_id=end,
                                pad_token_id=tokenizer.pad_token_id, **options)
        for ids in output[:, batch['input_ids'].shape[1]:].tolist():
            length = ids.index(end) if end in ids else len(ids)
            results.append((tokenizer.decode(ids[:length], skip_special_tokens=True), length))
    return results


def score(rows: list[dict[str, Any]], greedy: list[tuple[str, int]],
          sampled: list[list[tuple[str, int]]]) -> dict[str, float]:
    """The held-out metrics from generated answers: ``greedy`` one per row, ``sampled`` one list per sample pass."""
    if len(greedy) != len(rows) or any(len(answers) != len(rows) for answers in sampled):
        raise ValueError(f'need one answer per row ({len(rows)} rows) in every pass')
    right = [is_correct(text, row['solution']) for (text, _), row in zip(greedy, rows, strict=False)]
    chains = [writes_chain(text) for text, _ in greedy]
    sampled_right = sum(is_correct(text, row['solution']) for answers in sampled
                        for (text, _), row in zip(answers, rows, strict=False))

    def share(flags: list[bool]) -> float:
        return sum(flags) / len(flags) if flags else float('nan')

    return {
        'heldout/greedy_accuracy': share(right),
        'heldout/pass@1': sampled_right / (len(sampled) * len(rows)) if sampled else float('nan'),
        'heldout/mean_length': sum(length for _, length in greedy) / len(greedy),
        'heldout/chain_share': share(chains),
        'heldout/chain_accuracy': share([r for r, c in zip(right, chains, strict=False) if c]),
        'heldout/direct_accuracy': share([r for r, c in zip(right, chains, strict=False) if not c]),
        'heldout/prompts': float(len(rows)),
    }


def evaluate(model: Any, tokenizer: Any, rows: list[dict[str, Any]], samples: int = 1, seed: int = 0,
             batch_size: int = 256) -> dict[str, float]:
    """Greedy metrics over ``rows``, and pass@1 as the mean correctness of ``samples`` sampled answers per row."""
    greedy = generate(model, tokenizer, rows, sample=False, batch_size=batch_size)
    sampled = [generate(model, tokenizer, rows, sample=True, seed=seed + index, batch_size=batch_size)
               for index in range(samples)]
    return score(rows, greedy, sampled)


def checkpoints(path: Path) -> list[tuple[int, Path]]:
    """(global step, directory) of each ``checkpoint-N`` under ``path`` (one level or two: ms-swift's vN-... dir)."""
    found = [p for p in path.glob('checkpoint-*') if CHECKPOINT.search(p.name)]
    found += [p for p in path.glob('*/checkpoint-*') if CHECKPOINT.search(p.name)]
    return sorted((int(CHECKPOINT.search(p.name).group(1)), p) for p in found)


def evaluate_dirs(paths: list[Path], heldout: Path, out: Path | None, step: int = 0, samples: int = 1,
                  seed: int = 0, skip_steps: set[int] | None = None) -> list[dict[str, float]]:
    rows = load_rows(heldout)
    results = []
    for path in paths:
        targets = checkpoints(path) or [(step, path)]
        for global_step, model_dir in targets:
            if skip_steps and global_step in skip_steps:
                continue
            began = time.time()
            model, tokenizer = load_policy(model_dir)
            result = {'global_step': global_step, **evaluate(model, tokenizer, rows, samples, seed),
                      'heldout/eval_seconds': round(time.time() - began, 1)}
            results.append(result)
            if out is not None:
                with out.open('a') as handle:
                    handle.write(json.dumps(result) + '\n')
            print(f'step {global_step:>4}  greedy {result["heldout/greedy_accuracy"]:.3f}  '
                  f'pass@1 {result["heldout/pass@1"]:.3f}  length {result["heldout/mean_length"]:.1f}  '
                  f'chains {result["heldout/chain_share"]:.2f}  ({result["heldout/eval_seconds"]} s)', flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('paths', type=Path, nargs='+', help='model directories or ms-swift output directories')
    parser.add_argument('--heldout', type=Path, required=True, help='heldout.jsonl written by task.py')
    parser.add_argument('--out', type=Path, default=None, help='append one JSON line per evaluated step here')
    parser.add_argument('--step', type=int, default=0, help='global_step recorded for a plain model directory')
    parser.add_argument('--samples', type=int, default=1, help='sampled answers per prompt for pass@1 (>= 0)')
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args()
    if args.samples < 0:
        parser.error(f'--samples must be >= 0, got {args.samples}')
    for path in [args.heldout, *args.paths]:
        if not path.exists():
            parser.error(f'no such file or directory: {path}')
    evaluate_dirs(args.paths, args.heldout, args.out, args.step, args.samples, args.seed)


if __name__ == '__main__':
    main()
