"""``swift-fipo inspect``: one self-contained HTML page showing each captured token coloured by its FIPO
weight, with a step selector and per-token details on hover.

The page embeds its data and its script; a Content-Security-Policy forbids every network request, so it
opens the same offline, from a CI artifact or an e-mail attachment.
"""

from __future__ import annotations

import html
import json
import math
from importlib import resources
from pathlib import Path
from typing import Any, Optional

from swift_fipo.viz.rundir import TOKENS_FILE, RunDirError, find_run_file, read_jsonl, run_label

TEMPLATE = 'inspect_template.html'
_NUMBER_FIELDS = ('weight', 'future_kl', 'raw_weight')


def load_records(path: Path) -> list[dict[str, Any]]:
    """The records of a fipo_tokens.jsonl, checked field by field (errors name the line)."""
    records = read_jsonl(path)
    if not records:
        raise RunDirError(f'{path}: empty; no logging step has been captured yet.')
    for number, record in enumerate(records, start=1):
        where = f'{path}: record {number}'
        step = record.get('step')
        if isinstance(step, bool) or not isinstance(step, int):
            raise RunDirError(f'{where}: "step" must be an integer, got {step!r}.')
        tokens = record.get('tokens')
        if not isinstance(tokens, list):
            raise RunDirError(f'{where}: "tokens" must be a list.')
        for position, token in enumerate(tokens):
            if not isinstance(token, dict) or not isinstance(token.get('text'), str):
                raise RunDirError(f'{where}, token {position}: expected an object with a "text" string.')
            for name in _NUMBER_FIELDS:
                value = token.get(name)
                if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
                    raise RunDirError(f'{where}, token {position}: "{name}" must be a number, got {value!r}.')
            if not isinstance(token.get('weight'), (int, float)) or not math.isfinite(token['weight']):
                raise RunDirError(f'{where}, token {position}: "weight" must be a finite number.')
    return records


def render(records: list[dict[str, Any]], title: str, source: str) -> str:
    """The HTML page for ``records``."""
    template = resources.files('swift_fipo.viz').joinpath(TEMPLATE).read_text(encoding='utf-8')
    payload = json.dumps({'title': title, 'source': source, 'records': records}, ensure_ascii=False,
                         separators=(',', ':'), allow_nan=False)
    # Inside <script> only "</script" (and "<!--") can end the block; escaping every < > & keeps it valid JSON.
    payload = payload.replace('<', '\\u003c').replace('>', '\\u003e').replace('&', '\\u0026')
    return template.replace('__FIPO_TITLE__', html.escape(title)).replace('__FIPO_DATA__', payload)


def inspect(run_dir: str | Path, output: Optional[str | Path] = None) -> Path:
    """Write the page for the newest fipo_tokens.jsonl under ``run_dir``; default beside it as
    ``fipo_tokens.html``. Returns the page's path."""
    path = find_run_file(run_dir, TOKENS_FILE,
                         hint='Train with `--fipo_log_tokens N` to capture N completions per logging step.')
    records = load_records(path)
    target = Path(output) if output is not None else path.with_suffix('.html')
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(render(records, f'FIPO tokens: {run_label(run_dir)}', str(path)), encoding='utf-8')
    return target
