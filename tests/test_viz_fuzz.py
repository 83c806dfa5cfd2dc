"""Fuzzing the files `swift-fipo plot` and `inspect` read: generated and byte-mutated run directories.

Any bytes in logging.jsonl, eval.jsonl or fipo_tokens.jsonl are input, and bad input must end in ``RunDirError``
(the command's one-line error, exit 2), never another exception; what is accepted must be drawable:
only finite numbers reach the chart, and the page's embedded JSON parses. Most cases call the readers
in-process (fast); a few go through the real ``swift-fipo`` command to show that no traceback reaches
the terminal. Example counts come from the hypothesis profile (tests/conftest.py).
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import need  # noqa: E402

hypothesis = need('hypothesis')
need('matplotlib')
from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from swift_fipo import cli  # noqa: E402
from swift_fipo.viz import inspect as viz_inspect  # noqa: E402
from swift_fipo.viz import plot as viz_plot  # noqa: E402
from swift_fipo.viz.rundir import RunDirError, supersede_resumed  # noqa: E402

VERSION_DIR = 'v0-20260101-120000'
METRIC_KEYS = ['reward', 'completions/mean_length', 'fipo/future_kl_mean', 'fipo/influence_weight_mean',
               'fipo/influence_weight_max', 'fipo/raw_weight_mean', 'fipo/clipped_high_ratio',
               'fipo/$\\frac$', 'fipo/\ud800', 'loss', 'global_step/max_steps']
# Byte snippets that broke or could break a reader: non-finite and huge literals, deep nesting,
# invalid UTF-8 and encoded surrogates, NUL, mathtext, placeholders of the HTML template.
NASTY_BYTES = [b'NaN', b'Infinity', b'-Infinity', b'1e999', b'-1e999', b'9' * 5000, b'[' * 5000,
               b'{"a":' * 3000, b'\xff\xfe', b'\xed\xa0\x80', b'"\\ud800"', b'\x00', b'\n', b'\r\n',
               b'"$\\\\frac$"', b'"__FIPO_DATA__"', b'1e308', b'-1.7976931348623157e308', b'true', b'null',
               b'"7/9"', b'"99999999999999999999999999/1"', b'{}', b'[]', b'"', b',']

JSON_LEAF = st.one_of(st.none(), st.booleans(), st.floats(), st.integers(-10**30, 10**30),
                      st.sampled_from([10**400, -10**400, 2**53 + 1, 1e308, -1e308, 5e-324]),
                      st.text(max_size=8), st.sampled_from(['$x$', '</script>', '\ud800', '__FIPO_TITLE__']))
JSON_VALUE = st.recursive(JSON_LEAF, lambda inner: st.lists(inner, max_size=3)
                          | st.dictionaries(st.text(max_size=4), inner, max_size=3), max_leaves=8)


@st.composite
def logging_rows(draw: Any) -> list[Any]:
    """logging.jsonl rows: mostly plausible (a step, metric values), with hostile values and rows."""
    rows: list[Any] = []
    for step in range(1, draw(st.integers(0, 6)) + 1):
        row: dict[str, Any] = {'global_step/max_steps': draw(st.sampled_from([f'{step}/6', step, f'{step}/x', None]))}
        for key in draw(st.lists(st.sampled_from(METRIC_KEYS), max_size=6)):
            row[key] = draw(st.floats(-2, 2) | JSON_VALUE)
        rows.append(row)
    if draw(st.booleans()):
        rows.append(draw(JSON_VALUE))  # a foreign line: not an object, or an object without a step
    if draw(st.booleans()):  # many unknown fipo/* metrics
        count = draw(st.integers(0, 60))
        rows.append({'global_step/max_steps': '1/1', **{f'fipo/m{index}': 0.5 for index in range(count)}})
    return rows


@st.composite
def token_records(draw: Any) -> list[Any]:
    """fipo_tokens.jsonl records: the capture's schema, each field sometimes replaced by a hostile value."""
    def maybe(value: Any) -> Any:
        return draw(JSON_VALUE) if draw(st.integers(0, 9)) == 0 else value

    records: list[Any] = []
    for index in range(draw(st.integers(0, 4))):
        tokens = [maybe({'id': maybe(position), 'text': maybe(draw(st.text(max_size=5))), 'weight': maybe(1.1),
                         'future_kl': maybe(draw(st.floats(-1, 1))), 'raw_weight': maybe(1.2),
                         'safety': maybe(True)})
                  for position in range(draw(st.integers(0, 5)))]
        records.append(maybe({'step': maybe(draw(st.integers(0, 3))), 'index': maybe(index), 'advantage': maybe(-0.5),
                              'num_tokens': maybe(len(tokens)), 'truncated': maybe(False), 'tokens': maybe(tokens)}))
    return records


@st.composite
def mutated(draw: Any, content: bytes) -> bytes:
    """``content`` after up to 4 byte-level mutations: insert a nasty or random snippet, delete or
    overwrite a range, truncate."""
    data = bytearray(content)
    for _ in range(draw(st.integers(0, 4))):
        position = draw(st.integers(0, len(data)))
        operation = draw(st.sampled_from(['insert', 'delete', 'overwrite', 'truncate']))
        snippet = draw(st.sampled_from(NASTY_BYTES) | st.binary(min_size=1, max_size=6))
        if operation == 'insert':
            data[position:position] = snippet
        elif operation == 'delete':
            del data[position:position + draw(st.integers(1, 20))]
        elif operation == 'overwrite':
            data[position:position + len(snippet)] = snippet
        else:
            del data[position:]
    return bytes(data)


def serialise(rows: list[Any]) -> bytes:
    # allow_nan: json.dumps writes NaN/Infinity, as a careless writer (or Python's default) would.
    return ''.join(json.dumps(row, allow_nan=True) + '\n' for row in rows).encode('utf-8', 'surrogatepass')


def write(root: Path, name: str, content: bytes) -> Path:
    run = root / 'output' / VERSION_DIR
    run.mkdir(parents=True, exist_ok=True)
    (run / name).write_bytes(content)
    return root


def fresh_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp('fuzz')


def check_plot_reader(root: Path) -> None:
    """load_run accepts (finite series only) or refuses with RunDirError; nothing else escapes."""
    try:
        run = viz_plot.load_run(root)
    except RunDirError as error:
        hypothesis.event('refused')
        assert '\n' not in str(error).strip()
        return
    hypothesis.event('accepted')
    assert run.series
    for steps, values in run.series.values():
        assert len(steps) == len(values) and all(math.isfinite(value) for value in values)
        assert all(isinstance(step, int) for step in steps)
    viz_plot.panels_for([run])


def check_inspect_reader(root: Path) -> None:
    """load_records accepts (and the page embeds valid JSON of finite numbers) or raises RunDirError."""
    path = root / 'output' / VERSION_DIR / 'fipo_tokens.jsonl'
    try:
        records = viz_inspect.load_records(path)
    except RunDirError:
        hypothesis.event('refused')
        return
    hypothesis.event('accepted')
    page = viz_inspect.render(records, 'FIPO tokens: fuzz', str(path))
    data = json.loads(re.search(r'<script id="fipo-data" type="application/json">(.*?)</script>', page, re.S)
                      .group(1), parse_constant=lambda name: pytest.fail(f'{name} in the page'))
    assert len(data['records']) == len(records)
    page.encode('utf-8', 'replace')  # what inspect writes


@given(rows=logging_rows(), data=st.data())
def test_fuzz_plot_reader(tmp_path_factory: pytest.TempPathFactory, rows: list[Any], data: Any) -> None:
    content = data.draw(mutated(serialise(rows)))
    check_plot_reader(write(fresh_dir(tmp_path_factory), 'logging.jsonl', content))


@given(records=token_records(), data=st.data())
def test_fuzz_inspect_reader(tmp_path_factory: pytest.TempPathFactory, records: list[Any], data: Any) -> None:
    content = data.draw(mutated(serialise(records)))
    check_inspect_reader(write(fresh_dir(tmp_path_factory), 'fipo_tokens.jsonl', content))


@st.composite
def eval_rows(draw: Any) -> list[Any]:
    """eval.jsonl rows: a global_step (sometimes hostile, sometimes going back as a resumed run's do) and
    held-out metrics."""
    rows: list[Any] = []
    for _ in range(draw(st.integers(0, 6))):
        row: dict[str, Any] = {'global_step': draw(st.integers(0, 8) | JSON_VALUE)}
        for key in draw(st.lists(st.sampled_from(['heldout/greedy_accuracy', 'heldout/pass@1', 'heldout/x',
                                                  'reward', 'global_step/max_steps', '$\\frac$']), max_size=4)):
            row[key] = draw(st.floats(0, 1) | JSON_VALUE)
        rows.append(row)
    return rows


@given(rows=eval_rows(), data=st.data())
def test_fuzz_eval_jsonl_beside_a_valid_run(tmp_path_factory: pytest.TempPathFactory, rows: list[Any],
                                            data: Any) -> None:
    root = write(fresh_dir(tmp_path_factory), 'logging.jsonl',
                 b'{"global_step/max_steps": "1/2", "fipo/future_kl_mean": 0.1}\n')
    write(root, 'eval.jsonl', data.draw(mutated(serialise(rows))))
    check_plot_reader(root)


def superseded_by_hand(rows: list[tuple[int, int]], repeat_restarts: bool) -> list[tuple[int, int]]:
    """The rule stated plainly: a row going back (or repeating, with ``repeat_restarts``) removes every earlier
    row at its step or after it."""
    kept: list[tuple[int, int]] = []
    for row in rows:
        if kept and (row < kept[-1] or (repeat_restarts and row == kept[-1])):
            kept = [earlier for earlier in kept if earlier[0] < row[0]]
        kept.append(row)
    return kept


@given(rows=st.lists(st.tuples(st.integers(0, 6), st.integers(0, 2)), max_size=30), repeat_restarts=st.booleans())
def test_supersede_resumed_keeps_the_latest_run_of_every_step(rows: list[tuple[int, int]],
                                                              repeat_restarts: bool) -> None:
    kept = supersede_resumed(rows, lambda row: row, repeat_restarts=repeat_restarts)
    assert kept == superseded_by_hand(rows, repeat_restarts)
    assert kept == sorted(kept) and (not repeat_restarts or len(set(kept)) == len(kept))
    if rows:  # the last row written always stands, and so does every row after the last restart
        assert kept[-1] == rows[-1]


@pytest.mark.parametrize('command', ['plot', 'inspect'])
@given(rows=st.one_of(logging_rows(), token_records()), data=st.data())
@hypothesis.settings(max_examples=25)  # each one draws a PNG or writes a page: bounded
def test_fuzz_commands_in_process(tmp_path_factory: pytest.TempPathFactory, command: str, rows: list[Any],
                                  data: Any) -> None:
    name = 'logging.jsonl' if command == 'plot' else 'fipo_tokens.jsonl'
    root = write(fresh_dir(tmp_path_factory), name, data.draw(mutated(serialise(rows))))
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = cli.main([command, str(root), '-o', str(root / 'out')])
    out, err = stdout.getvalue(), stderr.getvalue()
    err = '\n'.join(line for line in err.splitlines() if not line.startswith('swift-fipo: note: '))
    hypothesis.event(f'exit {code}')
    assert 'please report this' not in err, err  # the last-resort handler: a fault the command did not know
    if code == 0:
        written = Path(out.strip().removeprefix('wrote '))
        assert written.is_file() and written.stat().st_size > 0
    else:
        assert code == 2 and err.startswith(f'swift-fipo {command}: error: ') and len(err.splitlines()) == 1


# --- the real command: no traceback reaches the terminal --------------------------------------------

REAL_CASES = {
    'non-finite token numbers': ('fipo_tokens.jsonl', b'{"step": 1, "tokens": [{"text": "a", "weight": 1.0, '
                                 b'"future_kl": NaN, "raw_weight": Infinity}]}\n'),
    'deep nesting': ('logging.jsonl', b'[' * 100000 + b'\n{}\n'),
    'a 5000-digit integer': ('logging.jsonl', b'{"reward": ' + b'9' * 5000 + b'}\n{}\n'),
    'invalid UTF-8': ('fipo_tokens.jsonl', b'{"step": 1, "tokens": [{"text": "\xff", "weight": 1}]}\n'),
    'huge metric values': ('logging.jsonl', b'{"global_step/max_steps": "1/2", "reward": 1e308}\n'
                           b'{"global_step/max_steps": "2/2", "reward": -1.7e308, "fipo/$\\\\frac$": 1}\n'),
    'lone surrogate in a token': ('fipo_tokens.jsonl', b'{"step": 1, "tokens": [{"text": "\\ud800", "weight": 1}]}\n'),
}


@pytest.mark.parametrize('case', sorted(REAL_CASES))
def test_real_command_never_prints_a_traceback(tmp_path: Path, case: str) -> None:
    name, content = REAL_CASES[case]
    root = write(tmp_path, name, content)
    command = 'plot' if name == 'logging.jsonl' else 'inspect'
    result = subprocess.run([sys.executable, '-m', 'swift_fipo.cli', command, str(root), '-o', str(tmp_path / 'out')],
                            capture_output=True, text=True, errors='replace', check=False, timeout=120,
                            env={**os.environ, 'SWIFT_FIPO_DISABLE': '1'})
    assert 'Traceback' not in result.stderr and 'please report this' not in result.stderr, result.stderr
    if result.returncode == 0:  # accepted (the drawable part): the file named is the file written
        assert Path(result.stdout.strip().removeprefix('wrote ')).is_file()
    else:
        assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
