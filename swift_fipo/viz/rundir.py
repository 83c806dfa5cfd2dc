"""Finding and reading the files ms-swift (and the plugin) write into a run's output directory."""

from __future__ import annotations

import json
import math
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

LOGGING_FILE = 'logging.jsonl'
TOKENS_FILE = 'fipo_tokens.jsonl'  # the name swift_fipo.integrations.ms_swift.token_capture writes
# Held-out evaluation a user's own script writes beside logging.jsonl: one JSON object per evaluated step.
EVAL_FILE = 'eval.jsonl'
# "global_step/max_steps" in HF-style logs, "iteration" in Megatron's: both "done/total".
_STEP_KEYS = ('global_step/max_steps', 'iteration')
_STEP_PATTERN = re.compile(r'^\s*(\d{1,18})\s*/\s*\d{1,18}\s*$')  # bounded: int() of 4300+ digits raises
_VERSION_DIR = re.compile(r'^v\d+-\d{8}-\d{6}$')  # ms-swift's per-run subdirectory


Row = TypeVar('Row')


class RunDirError(Exception):
    """A run directory that cannot be shown; the message says what is wrong and what to do."""


def find_run_file(run_dir: str | Path, name: str, hint: str = '') -> Path:
    """The newest ``name`` in ``run_dir`` or below it.

    ``run_dir`` may be ms-swift's ``--output_dir`` (holding ``v0-<date>/`` subdirectories, one per
    run), one of those subdirectories, a directory above them, or the file itself.
    """
    path = Path(run_dir)
    try:
        if not path.exists():
            raise RunDirError(f'{path}: no such file or directory.')
        if path.is_file():
            if path.name != name:
                raise RunDirError(f'{path}: expected a run directory or a {name} file.')
            return path
        if not path.is_dir():
            raise RunDirError(f'{path}: neither a directory nor a regular file.')
        found = [candidate for candidate in path.rglob(name) if candidate.is_file()]
        if not found:
            raise RunDirError(f'{path}: no {name} in it or below it. {hint}'.rstrip())
        return max(found, key=lambda candidate: (candidate.stat().st_mtime, str(candidate)))
    except (OSError, ValueError) as error:  # unreadable directories, a NUL in the name, a file removed meanwhile
        raise RunDirError(f'{path}: cannot search it: {error}') from None


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Every line of a JSON-lines file as a dict.

    A last line without its newline that does not parse is skipped with a note (the run may still be
    writing it); any other malformed line is an error naming the line.
    """
    try:
        text = path.read_text(encoding='utf-8')
    except (OSError, UnicodeDecodeError) as error:
        raise RunDirError(f'{path}: cannot read it: {error}') from None
    lines = text.split('\n')
    rows: list[dict[str, Any]] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            if number == len(lines):  # unterminated: being written right now
                print(f'swift-fipo: note: skipped the unfinished last line of {path}', file=sys.stderr)
                continue
            raise RunDirError(f'{path}:{number}: not valid JSON ({error.msg}).') from None
        except ValueError as error:  # an integer literal of more than 4300 digits
            raise RunDirError(f'{path}:{number}: unreadable JSON ({str(error).split(":")[0]}).') from None
        except RecursionError:
            raise RunDirError(f'{path}:{number}: JSON nested too deeply to read.') from None
        if not isinstance(row, dict):
            raise RunDirError(f'{path}:{number}: expected a JSON object, got {type(row).__name__}.')
        rows.append(row)
    return rows


def step_of(row: dict[str, Any]) -> int | None:
    """The training step a logging.jsonl row belongs to, or None (summary rows, foreign lines)."""
    for key in _STEP_KEYS:
        value = row.get(key)
        if isinstance(value, str):
            match = _STEP_PATTERN.match(value)
            if match:
                return int(match.group(1))
    return None


def supersede_resumed(rows: Sequence[Row], position: Callable[[Row], tuple[int, ...] | None],
                      repeat_restarts: bool = False) -> list[Row]:
    """The rows of an appended-to file as the latest run wrote them, in file order.

    A run resumed from a checkpoint into the same output directory appends again from that checkpoint's
    step on. So a row whose position (its step, then any order within the step) is below the last one
    seen starts a resumed run, and every earlier row at or after that row's step is superseded. With
    ``repeat_restarts`` a repeated position restarts too (token records number the completions of a
    step from 0; logging rows of one step merge instead). Rows without a position (summary rows) are left out.
    """
    kept: list[tuple[tuple[int, ...], Row]] = []
    for row in rows:
        here = position(row)
        if here is None:
            continue
        if kept and (here < kept[-1][0] or (repeat_restarts and here == kept[-1][0])):
            # Kept rows are in order of position, so the superseded ones are at the end (each row leaves once).
            while kept and kept[-1][0][0] >= here[0]:
                kept.pop()
        kept.append((here, row))
    return [row for _, row in kept]


def finite_number(value: Any) -> float | None:
    """A JSON value as a finite float, or None: bool, non-numbers, NaN, +-inf and ints beyond the float
    range (json reads 1e999 as inf and keeps big integers exact) are not plottable numbers."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def run_label(run_dir: str | Path) -> str:
    """A short name for a run in legends: the directory as the user named it."""
    try:
        path = Path(run_dir).resolve()
    except (OSError, RuntimeError):  # a symlink loop
        return str(run_dir)
    if path.is_file():
        path = path.parent
    # "output" and "v0-20260101-120000" say nothing on their own: name the directory above them too.
    if path.name == 'output' or _VERSION_DIR.match(path.name):
        return f'{path.parent.name}/{path.name}' if path.parent.name else path.name
    return path.name or str(path)
