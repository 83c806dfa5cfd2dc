"""docs/parameters.md must not drift from the code: every flag, and each preset's value of it."""

from __future__ import annotations

from conftest import REPO

from swift_fipo.config import PRESETS
from swift_fipo.integrations.ms_swift.arguments import FLAG_NAMES


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

    from swift_fipo.integrations.ms_swift import arguments as ms_swift_cli

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


# --- metric tables, quoted messages and versions: each must be what the code emits --------------------------

def _summary_keys() -> set[str]:
    """The keys ``FIPOStats.summary`` has with clipping on (the clip fractions exist only then)."""
    import torch

    from swift_fipo.config import FIPOConfig
    from swift_fipo.ops.influence import compute_fipo_influence
    log_ratio = torch.tensor([[0.1, -0.2, 0.3]])
    _, stats = compute_fipo_influence(log_ratio, torch.ones(1, 3, dtype=torch.bool), torch.tensor([-1.0]),
                                      FIPOConfig(clip_range=0.2))
    return set(stats.summary)


def _trl_logged_keys() -> set[str]:
    """The names FIPOGRPOTrainer writes into TRL's metric store: what its metric sink (``interception.
    record_summaries``, called by ``_reweight_advantages``) writes for one loss call's stats."""
    import collections

    import torch

    from swift_fipo.config import FIPOConfig
    from swift_fipo.integrations.interception import record_summaries
    from swift_fipo.ops.influence import compute_fipo_influence
    _, stats = compute_fipo_influence(torch.tensor([[0.1, -0.2]]), torch.ones(1, 2, dtype=torch.bool),
                                      torch.tensor([-1.0]), FIPOConfig(clip_range=0.2))
    metrics: collections.defaultdict = collections.defaultdict(list)
    record_summaries(metrics, stats, gather=lambda row: row)
    return set(metrics)


def _metric_tables() -> dict[str, list[set[str]]]:
    """Every markdown table in docs/ whose first header cell is ``metric``: the names in its first column."""
    import re
    tables: dict[str, list[set[str]]] = {}
    for path in sorted((REPO / 'docs').glob('*.md')):
        names: set[str] | None = None
        for line in path.read_text().splitlines() + ['']:
            cells = [cell.strip() for cell in line.split('|')[1:-1]] if line.startswith('|') else None
            if cells and names is None and cells[0] == 'metric':
                names = set()
            elif cells and names is not None and not set(cells[0]) <= set('-: '):
                names.update(re.findall(r'`([^`]+)`', cells[0]))
            elif not cells and names is not None:
                tables.setdefault(path.name, []).append(names)
                names = None
    return tables


def test_every_metric_table_lists_exactly_the_keys_the_code_emits():
    """parameters.md (ms-swift, under fipo/) and custom-trainers.md (TRL) against the emitted keys; a new
    metric table must say here which host's keys it lists."""
    import importlib.util

    from swift_fipo.integrations.metrics import METRIC_REDUCTIONS

    summary = _summary_keys()
    assert set(METRIC_REDUCTIONS) == summary  # every emitted key has a documented reduction, and no other
    tables = _metric_tables()
    assert set(tables) == {'parameters.md', 'custom-trainers.md'}, f'a metric table of an unknown host: {tables}'
    assert tables['parameters.md'] == [summary]
    trl_keys = _trl_logged_keys() if importlib.util.find_spec('trl') else {f'fipo/{key}' for key in summary}
    assert trl_keys == {f'fipo/{key}' for key in summary}
    assert tables['custom-trainers.md'] == [trl_keys]


def test_verl_page_names_the_keys_verl_does_not_log():
    from swift_fipo.integrations.verl import hooks as fipo_verl

    text = (REPO / 'docs' / 'verl.md').read_text().replace('\n', ' ')
    assert fipo_verl._UNLOGGED <= _summary_keys()
    for key in fipo_verl._UNLOGGED:
        assert f'`{key}` is not logged under verl' in text, key


def _reproduce(message: str) -> BaseException | None:
    """The error the code raises for the situation ``message`` describes, or None if the form is unknown."""
    import ast
    import re

    from swift_fipo.integrations.ms_swift import arguments as ms_swift_cli
    from swift_fipo.integrations.settings import resolve_config
    from swift_fipo.integrations.verl import hooks as fipo_verl

    def raised(call, *args, **kwargs) -> BaseException:
        try:
            call(*args, **kwargs)
        except (ValueError, TypeError, RuntimeError) as error:
            return error
        raise AssertionError(f'the code accepts what the docs quote a refusal of: {message}')

    prefix = re.escape(fipo_verl.OPTION_PREFIX)
    threshold = re.fullmatch(rf'verl: ({re.escape(fipo_verl.DUAL_CLIP_OPTION)}|{prefix}\.filter_threshold) must be '
                             rf'> 1 \+ {re.escape(fipo_verl.CLIP_HIGH_OPTION)} = ([\d.]+) .*; got ([\d.]+)\.', message)
    if threshold:
        option, bound, value = threshold.group(1), float(threshold.group(2)), float(threshold.group(3))
        if option == fipo_verl.DUAL_CLIP_OPTION:
            return raised(fipo_verl.fipo_config, {}, clip_ratio_c=value, clip_ratio_high=bound - 1)
        return raised(fipo_verl.fipo_config, {'filter_threshold': value}, clip_ratio_high=bound - 1)
    option = re.fullmatch(rf'verl: {prefix}\.(\w+) must be .*; got (.+)\.', message)
    if option:
        return raised(fipo_verl.fipo_config, {option.group(1): ast.literal_eval(option.group(2))})
    flag = re.fullmatch(rf'{re.escape(ms_swift_cli.HOST)}: --(\w+) must be .*; got (.+)\.', message)
    if flag:
        field = {name: field for field, name in ms_swift_cli.FLAG_NAMES.items()}[flag.group(1)]
        return raised(resolve_config, 'swift', {field: ast.literal_eval(flag.group(2))},
                      lambda name: f'--{ms_swift_cli.FLAG_NAMES[name]}', ms_swift_cli.HOST)
    return None


def test_every_quoted_error_message_is_the_one_the_code_raises():
    """Error lines in the docs' code blocks (``ValueError('...')`` as Hydra prints it, or ``ValueError: ...``)
    and inline quotes of the plugin's own messages: each is reproduced and must be the code's message, verbatim."""
    import re

    quoted = []
    for path in [REPO / 'README.md', *sorted((REPO / 'docs').glob('*.md'))]:
        text = path.read_text()
        for index, block in enumerate(text.split('```')):
            if index % 2:  # inside a fenced block
                for line in block.splitlines():
                    match = re.fullmatch(r"(\w+Error)(?:\('(.*)'\)|: (.*))", line.strip())
                    if match:
                        quoted.append((path.name, match.group(1), match.group(2) or match.group(3),
                                       match.group(2) is not None))
            else:
                for span in re.findall(r'`([^`\n]+)`', block):
                    if re.match(r'(verl|swift-fipo): \S', span):
                        quoted.append((path.name, None, span, False))
    assert len(quoted) >= 2, quoted  # verl.md quotes two refusals
    for page, kind, message, as_repr in quoted:
        error = _reproduce(message)
        assert error is not None, f'{page} quotes a message no reproducer here knows: {message!r}'
        if kind is not None:
            assert type(error).__name__ == kind, (page, message)
        shown = repr(error) if as_repr else str(error)
        assert shown == (f'{kind}({message!r})' if as_repr else message), (page, shown)


def test_readme_gives_the_trl_range_and_versions_of_the_trl_trainer():
    """Read from trl/trainer.py's source (this runs without TRL)."""
    import ast
    import re

    constants = {node.targets[0].id: ast.literal_eval(node.value)
                 for node in ast.parse((REPO / 'swift_fipo' / 'integrations' / 'trl' / 'trainer.py').read_text()).body
                 if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name)
                 and node.targets[0].id in ('SUPPORTED_RANGE', 'TESTED_VERSIONS')}
    bullet = re.search(r'^- TRL .*?(?=^- )', (REPO / 'README.md').read_text(), flags=re.M | re.S).group(0)
    bullet = ' '.join(bullet.split())
    assert constants['SUPPORTED_RANGE'] in bullet
    assert set(re.findall(r'\b\d+\.\d+\.\d+\b', bullet)) == set(constants['TESTED_VERSIONS'])



def _readme_commands_and_flags(name: str) -> tuple[list[str], set[str]]:
    """A README's shell commands (every line of its ```bash blocks, comments included: they say what the
    command does) and every ``--flag`` it mentions anywhere."""
    import re
    text = (REPO / name).read_text()
    commands = [line.rstrip() for block in re.findall(r'```bash\n(.*?)```', text, flags=re.S)
                for line in block.splitlines()]
    return commands, set(re.findall(r'(?<![\w-])--[a-z][\w.-]*', text))


def test_the_chinese_readme_gives_the_english_ones_commands_and_flags():
    """README.zh-CN.md (linked from the top of README.md) shows the same commands, in the same order, and names
    the same flags: a command or flag changed in one README and not the other fails here."""
    english_commands, english_flags = _readme_commands_and_flags('README.md')
    chinese_commands, chinese_flags = _readme_commands_and_flags('README.zh-CN.md')
    assert english_commands and english_flags
    assert chinese_commands == english_commands
    assert chinese_flags == english_flags, (f'only in README.md: {sorted(english_flags - chinese_flags)}; '
                                            f'only in README.zh-CN.md: {sorted(chinese_flags - english_flags)}')
    assert '(README.zh-CN.md)' in (REPO / 'README.md').read_text().split('\n## ')[0]
