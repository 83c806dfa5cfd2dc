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


def test_architecture_page_matches_the_code():
    """docs/architecture.md: every module it names exists, every watched host module is listed, and its
    block size and dense cutoff are the code's."""
    import re

    from swift_fipo import activation
    from swift_fipo.ops import future_kl

    text = (REPO / 'docs' / 'architecture.md').read_text()
    tree = text.split('```')[1]
    for path in re.findall(r'^\s+([\w/]+\.py)\b', tree, flags=re.M):
        assert (REPO / 'swift_fipo' / path).is_file(), path
    listed = {path for path in re.findall(r'^\s+([\w/]+\.py)\b', tree, flags=re.M)}
    modules = {str(path.relative_to(REPO / 'swift_fipo')) for path in (REPO / 'swift_fipo').rglob('*.py')
               if path.name != '__init__.py' and not path.parent.name == 'viz'}
    assert modules <= listed, f'modules missing from the tree: {sorted(modules - listed)}'
    for module in activation.WATCHED_MODULES:
        assert f'`{module}`' in text, module
    block, dense = future_kl.DEFAULT_BLOCK_SIZE, future_kl.DENSE_LENGTH
    assert f'blocks of\n{block} tokens' in text or f'blocks of {block} tokens' in text
    assert f'dense {dense}x{dense}' in text and f'{block}x{block} decay matrix' in text
    assert f'gamma^{block}' in text and f'gamma^({block}-i)' in text
    assert not re.search(r'\b(64|128)-token blocks\b|blocks of 64', text)


def test_every_flag_example_in_parameters_md_parses_as_written():
    """The ```flags block of docs/parameters.md: each line's flags give the values after its `->`,
    whether or not ms-swift's argument class has the native FIPO flags."""
    import ast
    import shlex

    from swift_fipo.integrations import ms_swift_cli

    block = (REPO / 'docs' / 'parameters.md').read_text().split('```flags\n')[1].split('```')[0]
    examples = [line.split('->') for line in block.splitlines() if line.strip()]
    assert len(examples) >= 10
    native = {'loss_type', 'delta', 'fipo_decay_rate', 'fipo_clip_range', 'fipo_clip_high_only',
              'fipo_safety_threshold'}
    for flags, expected in examples:
        for swift_fields in (native, {'loss_type', 'delta'}):
            config = ms_swift_cli.split_argv(shlex.split(flags), swift_fields).settings().config
            for assignment in expected.split():
                field, value = assignment.split('=')
                assert getattr(config, field) == ast.literal_eval(value), (flags, field)
