"""docs/parameters.md must not drift from the code: every flag, and each preset's value of it."""

from __future__ import annotations

from conftest import REPO
from swift_fipo.config import PRESETS
from swift_fipo.integrations.ms_swift_cli import FLAG_NAMES


def _cell(value) -> str:
    return 'None' if value is None else str(value).lower() if isinstance(value, bool) else repr(float(value))


def test_parameter_table_matches_the_presets():
    rows = {}
    for line in (REPO / 'docs' / 'parameters.md').read_text().splitlines():
        cells = [cell.strip().strip('`') for cell in line.split('|')[1:-1]]
        if cells and cells[0].startswith('--'):
            rows.setdefault(cells[0], cells)
    for field, flag in FLAG_NAMES.items():
        cells = rows[f'--{flag}']
        assert cells[1] == field
        assert cells[2:5] == [_cell(getattr(PRESETS[name], field)) for name in ('swift', 'paper-32b', 'paper-7b')], flag
