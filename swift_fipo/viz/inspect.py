"""``swift-fipo inspect``: one self-contained HTML page showing each captured token coloured by its FIPO
weight, with a step selector and per-token details on hover.

The page embeds its data and its script; a Content-Security-Policy forbids every network request, so it
opens the same offline, from a CI artifact or an e-mail attachment.
"""

from __future__ import annotations

import html
import json
import re
import unicodedata
from importlib import resources
from pathlib import Path
from typing import Any

from swift_fipo.viz.rundir import (
    TOKENS_FILE,
    RunDirError,
    find_run_file,
    finite_number,
    read_jsonl,
    run_label,
    supersede_resumed,
)

TEMPLATE = 'inspect_template.html'
_NUMBER_FIELDS = ('weight', 'future_kl', 'raw_weight')
_LARGEST_INT = 2**53  # what the page's JavaScript numbers hold exactly


def load_records(path: Path) -> list[dict[str, Any]]:
    """The records of a fipo_tokens.jsonl, checked field by field (errors name the record, token and
    field) and reduced to the fields the page shows, so nothing else in the file reaches it."""
    records = read_jsonl(path)
    if not records:
        raise RunDirError(f'{path}: empty; no logging step has been captured yet.')
    checked = [_record(record, f'{path}: record {number}') for number, record in enumerate(records, start=1)]
    # A run resumed into the same output directory appends its steps again: from the step it restarts at
    # (an earlier step, or completion 0 of a step again) its records replace the earlier run's.
    positioned = supersede_resumed(list(zip(_positions(checked), checked, strict=False)), lambda pair: pair[0],
                                   repeat_restarts=True)
    return [record for _, record in positioned]


def _positions(records: list[dict[str, Any]]) -> list[tuple[int, int]]:
    """(step, index) per record: the capture numbers a step's completions from 0. A record without an index
    takes the next number after the record before it at the same step, so it orders by step alone."""
    positions: list[tuple[int, int]] = []
    for record in records:
        follows = positions[-1][1] + 1 if positions and positions[-1][0] == record['step'] else 0
        positions.append((record['step'], follows if record['index'] is None else record['index']))
    return positions


def _record(record: dict[str, Any], where: str) -> dict[str, Any]:
    step = record.get('step')
    if isinstance(step, bool) or not isinstance(step, int) or abs(step) > _LARGEST_INT:
        raise RunDirError(f'{where}: "step" must be an integer, got {_shown(step)}.')
    tokens = record.get('tokens')
    if not isinstance(tokens, list):
        raise RunDirError(f'{where}: "tokens" must be a list.')
    clean: dict[str, Any] = {'step': step, 'tokens': [_token(token, f'{where}, token {position}')
                                                      for position, token in enumerate(tokens)]}
    for name in ('index', 'num_tokens'):
        clean[name] = _optional(record, name, where, integer=True)
    clean['advantage'] = _optional(record, 'advantage', where)
    truncated = record.get('truncated')
    if truncated is not None and not isinstance(truncated, bool):
        raise RunDirError(f'{where}: "truncated" must be true or false, got {_shown(truncated)}.')
    clean['truncated'] = bool(truncated)
    return clean


def _token(token: Any, where: str) -> dict[str, Any]:
    if not isinstance(token, dict) or not isinstance(token.get('text'), str):
        raise RunDirError(f'{where}: expected an object with a "text" string.')
    clean: dict[str, Any] = {'text': token['text'], 'id': _optional(token, 'id', where, integer=True)}
    for name in _NUMBER_FIELDS:
        clean[name] = _optional(token, name, where)
    if clean['weight'] is None:
        raise RunDirError(f'{where}: "weight" must be a finite number.')
    for name in ('in_loss', 'safety'):
        flag = token.get(name)
        if flag is not None and not isinstance(flag, bool):
            raise RunDirError(f'{where}: "{name}" must be true or false, got {_shown(flag)}.')
        if flag is not None:
            clean[name] = flag
    return clean


def _optional(holder: dict[str, Any], name: str, where: str, integer: bool = False) -> Any:
    """``holder[name]`` if it is a finite number (an integer if ``integer``), None if absent or null;
    anything else (NaN, Infinity, 1e999, a string, an integer beyond 2**53) is an error naming it."""
    value = holder.get(name)
    if value is None:
        return None
    if integer:
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) <= _LARGEST_INT:
            return value
        raise RunDirError(f'{where}: "{name}" must be an integer, got {_shown(value)}.')
    number = finite_number(value)
    if number is None:
        raise RunDirError(f'{where}: "{name}" must be a finite number, got {_shown(value)}.')
    return number


def _shown(value: Any) -> str:
    """A JSON value in an error message, short."""
    if isinstance(value, bool):
        return 'true' if value else 'false'
    if isinstance(value, int) and abs(value) > _LARGEST_INT:
        return f'an integer of {value.bit_length()} bits'
    if isinstance(value, (int, float, str)):
        return json.dumps(value)[:40]
    return 'null' if value is None else f'a JSON {"array" if isinstance(value, list) else "object"}'


def render(records: list[dict[str, Any]], title: str, source: str) -> str:
    """The HTML page for ``records``."""
    template = resources.files('swift_fipo.viz').joinpath(TEMPLATE).read_text(encoding='utf-8')
    payload = json.dumps({'title': title, 'source': source, 'records': records}, ensure_ascii=False,
                         separators=(',', ':'), allow_nan=False)
    # Inside <script> only "</script" (and "<!--") can end the block; escaping every < > & keeps it valid JSON.
    payload = payload.replace('<', '\\u003c').replace('>', '\\u003e').replace('&', '\\u0026')
    # One pass: a title or token text containing a placeholder's name must not be expanded again.
    fills = {'__FIPO_TITLE__': html.escape(visible_format_characters(title)), '__FIPO_DATA__': payload}
    return re.sub('__FIPO_TITLE__|__FIPO_DATA__', lambda match: fills[match.group(0)], template)


def visible_format_characters(text: str) -> str:
    """``text`` with each format character (Unicode category Cf) written as ``[U+XXXX]``: in the page's
    title (a directory name) a U+202E would otherwise reverse what follows it, in the browser's tab too,
    where no markup can isolate it. The page's script does the same for token text and the source."""
    return ''.join(f'[U+{ord(character):04X}]' if unicodedata.category(character) == 'Cf' else character
                   for character in text)


def inspect(run_dir: str | Path, output: str | Path | None = None) -> Path:
    """Write the page for the newest fipo_tokens.jsonl under ``run_dir``; default beside it as
    ``fipo_tokens.html``. Returns the page's path."""
    path = find_run_file(run_dir, TOKENS_FILE,
                         hint='Train with `--fipo_log_tokens N` to capture N completions per logging step.')
    records = load_records(path)
    target = Path(output) if output is not None else path.with_suffix('.html')
    if target.is_dir():
        raise RunDirError(f'{target}: is a directory; -o needs a file name.')
    _refuse_a_run_file(target, path)
    page = render(records, f'FIPO tokens: {run_label(run_dir)}', str(path))
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        # errors='replace': a lone surrogate (a JSON "\\ud800" in a token, undecodable bytes in a directory
        # name) has no UTF-8 form; it becomes U+FFFD rather than an exception.
        target.write_text(page, encoding='utf-8', errors='replace')
    except OSError as error:  # some errors (ENOSPC on /dev/full) carry no file name of their own
        raise RunDirError(f'{target}: cannot write the page: {error.strerror or error}.') from None
    return target


def _refuse_a_run_file(target: Path, tokens_file: Path) -> None:
    """An existing file of the run (the captured tokens, logging.jsonl, args.json, ...) is never
    overwritten by the page: only a new file or an earlier page (.html) may be the output."""
    if not target.is_file():
        return
    run_directory = tokens_file.parent.resolve()
    resolved = target.resolve()
    if resolved == tokens_file.resolve() or (run_directory in resolved.parents and resolved.suffix != '.html'):
        raise RunDirError(f"{target}: is one of the run's files; -o needs a new file or an .html page.")
