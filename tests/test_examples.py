"""The GPU recipes in examples/*.sh, checked flag by flag against ms-swift's own argument classes.

Each script is executed by bash with `swift`, `megatron` and `curl` replaced by shims on PATH that record
their argv and exit, so variables, arithmetic and line continuations are expanded exactly as on a GPU node.
Every recorded command line is then parsed by the parser ms-swift builds from its argument dataclass
(``HfArgumentParser``, as ``swift.utils.parse_args`` does), without running ``__post_init__``: an unknown
or renamed flag, a value outside a ``Literal``'s choices or a non-boolean for a bool flag fails the test.

``swift rlhf`` / ``swift rollout`` use ``RLHFArguments`` / ``RolloutArguments``. ``megatron rlhf`` uses the
real ``MegatronRLHFArguments`` where ``swift.megatron`` imports; elsewhere (no Transformer Engine) its
dataclass fields are read from the installed source files with ``ast`` and rebuilt as a dataclass, inherited
``swift.arguments`` classes included.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
import json
import os
import stat
import subprocess
import typing
from pathlib import Path

import pytest
from conftest import REPO, need, not_applicable_here

from swift_fipo.integrations.ms_swift import arguments as cli

pytestmark = [pytest.mark.ms_swift]
need('swift', 'ms-swift')

from swift_fipo.integrations.ms_swift import layout as ms_swift_layout  # noqa: E402

if not ms_swift_layout.native_fipo_installed():
    not_applicable_here('the GPU recipes are written for ms-swift >= 4.2.2 (their flags, e.g. --tuner_type and the '
                        'native --fipo_* flags); this ms-swift predates it')

EXAMPLES = REPO / 'examples'
# Run for real by the CLI tests rather than dry-run here.
RUN_FOR_REAL = {'fipo_cpu_tiny.sh'}
RECIPES = sorted(path.name for path in EXAMPLES.glob('*.sh') if path.name not in RUN_FOR_REAL)
# Flags the plugin takes out of argv before ms-swift parses it (swift_fipo's own, not ms-swift's).
# The plugin's own flags, taken off argv by the plugin before ms-swift parses it.
PLUGIN_FLAGS = {cli.PRESET_FLAG, cli.LOG_TOKENS_FLAG} | {
    flag for flag in cli.FLAG_NAMES.values()
    if flag not in ('fipo_decay_rate', 'fipo_clip_range', 'fipo_clip_high_only', 'fipo_safety_threshold', 'delta')}
# Consumed by the `megatron rlhf` entry point before argument parsing.
MEGATRON_CLI_FLAGS = {'use_ray'}

SHIM = """#!/usr/bin/env python3
import json, os, sys
with open(os.environ['RECIPE_RECORD'], 'a') as f:
    f.write(json.dumps({'prog': os.path.basename(sys.argv[0]), 'argv': sys.argv[1:],
                        'env': {k: os.environ.get(k)
                                for k in ('NPROC_PER_NODE', 'NNODES', 'CUDA_VISIBLE_DEVICES')}}) + '\\n')
"""


def _dry_run(script: str, tmp_path: Path) -> list[dict]:
    bin_dir = tmp_path / 'bin'
    bin_dir.mkdir()
    for name in ('swift', 'megatron', 'curl'):
        shim = bin_dir / name
        shim.write_text(SHIM)
        shim.chmod(shim.stat().st_mode | stat.S_IEXEC)
    record = tmp_path / 'commands.jsonl'
    env = {**os.environ, 'PATH': f'{bin_dir}{os.pathsep}{os.environ["PATH"]}', 'RECIPE_RECORD': str(record)}
    result = subprocess.run(['bash', str(EXAMPLES / script)], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    return [json.loads(line) for line in record.read_text().splitlines()] if record.exists() else []


def _parser(cls: type):
    from swift.utils.utils import _patch_get_type_hints
    from transformers import HfArgumentParser
    with _patch_get_type_hints():
        return HfArgumentParser([cls])


# ----------------------------------------------------------------------------------------------------------
# Megatron's argument classes, from source where they cannot be imported
# ----------------------------------------------------------------------------------------------------------

def _megatron_arguments_class() -> tuple[type, str]:
    try:
        from swift.megatron.arguments import MegatronRLHFArguments
        return MegatronRLHFArguments, 'imported'
    except Exception as error:  # mcore-bridge imports Transformer Engine, which needs CUDA
        reason = f'{type(error).__name__}: {error}'
    return _megatron_arguments_from_source(), f'rebuilt from source with ast ({reason})'


def _megatron_arguments_from_source() -> type:
    import swift.arguments
    folder = Path(importlib.util.find_spec('swift').origin).parent / 'megatron' / 'arguments'
    classes: dict[str, tuple[list[str], list[tuple[str, str]]]] = {}
    for path in sorted(folder.glob('*.py')):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.ClassDef):
                fields = [(item.target.id, ast.unparse(item.annotation)) for item in node.body
                          if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name)]
                classes[node.name] = ([ast.unparse(base) for base in node.bases], fields)
    assert 'MegatronRLHFArguments' in classes, f'no MegatronRLHFArguments in {folder}'

    annotations: dict[str, typing.Any] = {}

    def collect(name: str) -> None:  # base classes first, so subclasses override, as dataclasses do
        if name in classes:
            bases, fields = classes[name]
            for base in bases:
                collect(base)
            annotations.update(fields)
            return
        cls = getattr(swift.arguments, name)  # e.g. BaseArguments: importable on CPU
        from swift.utils.utils import _patch_get_type_hints
        with _patch_get_type_hints():
            hints = typing.get_type_hints(cls)
        for field in dataclasses.fields(cls):
            annotations.setdefault(field.name, hints.get(field.name, str))

    collect('MegatronRLHFArguments')
    namespace = {name: getattr(typing, name) for name in typing.__all__}

    def resolve(annotation: typing.Any) -> typing.Any:
        if not isinstance(annotation, str):
            return annotation
        try:
            resolved = eval(annotation, namespace)  # typing expressions only: Optional[Literal['a', 'b']], ...
        except Exception:  # e.g. torch.dtype: accept any string
            return str
        members = [arg for arg in typing.get_args(resolved) if arg is not type(None)]
        if typing.get_origin(resolved) is typing.Union and len(members) > 1:
            # e.g. Union[str, List[str], None]: HfArgumentParser only takes Optional[X]; a string will do.
            return typing.Optional[str]  # noqa: UP045 - a value for HfArgumentParser, not an annotation
        return resolved

    # Defaults are irrelevant to flag checking; None keeps every flag optional.
    return dataclasses.make_dataclass('MegatronRLHFArgumentsFromSource',
                                      [(name, resolve(annotation), dataclasses.field(default=None))
                                       for name, annotation in annotations.items()])


def test_megatron_arguments_from_source_know_the_fipo_and_parallel_flags():
    cls = _megatron_arguments_from_source()
    names = {field.name for field in dataclasses.fields(cls)}
    assert {'fipo_decay_rate', 'fipo_clip_range', 'fipo_clip_high_only', 'fipo_safety_threshold', 'delta',
            'tensor_model_parallel_size', 'pipeline_model_parallel_size', 'context_parallel_size',
            'steps_per_generation', 'model', 'dataset', 'external_plugins'} <= names
    parser = _parser(cls)
    with pytest.raises(SystemExit):  # a Literal's choices are enforced
        parser.parse_known_args(['--rlhf_type', 'not-a-type'])
    with pytest.raises(SystemExit):  # and bools must be bools
        parser.parse_known_args(['--fipo_clip_high_only', 'maybe'])
    namespace, unknown = parser.parse_known_args(['--context_parallel_size', '2', '--renamed_flag', '1'])
    assert namespace.context_parallel_size == 2 and unknown == ['--renamed_flag', '1']


# ----------------------------------------------------------------------------------------------------------
# The recipes
# ----------------------------------------------------------------------------------------------------------

def _argument_class(prog: str, argv: list[str]) -> tuple[type, list[str], str]:
    command = argv[0]
    if prog == 'swift' and command == 'rlhf':
        from swift.arguments import RLHFArguments
        return RLHFArguments, argv[1:], 'imported'
    if prog == 'swift' and command == 'rollout':
        from swift.arguments import RolloutArguments
        return RolloutArguments, argv[1:], 'imported'
    if prog == 'megatron' and command == 'rlhf':
        cls, how = _megatron_arguments_class()
        return cls, argv[1:], how
    raise AssertionError(f'unexpected command in a recipe: {prog} {" ".join(argv)}')


def _strip_plugin_flags(argv: list[str], extra: set[str]) -> list[str]:
    kept, skip_values = [], False
    for token in argv:
        if token.startswith('--'):
            skip_values = token[2:].split('=', 1)[0] in PLUGIN_FLAGS | extra
        if not skip_values:
            kept.append(token)
    return kept


@pytest.mark.parametrize('script', RECIPES)
def test_recipe_flags_parse_with_ms_swift(script, tmp_path):
    text = (EXAMPLES / script).read_text()
    assert text.startswith('#!/usr/bin/env bash') and 'set -euo pipefail' in text
    commands = _dry_run(script, tmp_path)
    assert commands, f'{script} ran no swift/megatron command'
    trained = False
    for command in commands:
        if command['prog'] == 'curl':
            continue
        cls, argv, how = _argument_class(command['prog'], command['argv'])
        extra = MEGATRON_CLI_FLAGS if command['prog'] == 'megatron' else set()
        namespace, unknown = _parser(cls).parse_known_args(_strip_plugin_flags(argv, extra))
        assert not unknown, (f'{script}: {command["prog"]} {command["argv"][0]} does not know {unknown} '
                             f'(ms-swift argument class {cls.__name__}, {how})')
        if command['argv'][0] == 'rlhf':
            trained = True
            loss_type = namespace.loss_type  # a list in RLHFArguments (several losses may be mixed)
            assert namespace.rlhf_type == 'grpo' and loss_type in ('fipo', ['fipo']), script
            # FIPO must be able to act: off-policy steps (reused rollouts or several steps per rollout).
            iterations = getattr(namespace, 'num_iterations', None) or 1
            steps = getattr(namespace, 'steps_per_generation', None) or 1
            assert iterations > 1 or steps > 1 or namespace.generation_batch_size, \
                f'{script}: every step is on-policy, FIPO == DAPO'
    assert trained, f'{script} never calls swift rlhf / megatron rlhf'


def test_paper_recipes_carry_the_paper_hyper_parameters(tmp_path):
    expected = {'fipo_paper_32b.sh': ('true', '10'), 'fipo_paper_7b.sh': ('false', '3')}
    for script, (high_only, safety) in expected.items():
        work = tmp_path / script
        work.mkdir()
        commands = [command for command in _dry_run(script, work) if command['prog'] == 'swift']
        argv = commands[-1]['argv']
        flags = dict(zip(argv[1::2], argv[2::2], strict=False))  # every flag in these recipes takes one value
        assert flags['--fipo_preset'] == script.removeprefix('fipo_').removesuffix('.sh').replace('_', '-')
        assert flags['--fipo_decay_rate'] == '32' and flags['--fipo_clip_range'] == '0.2'
        assert flags['--fipo_clip_high_only'] == high_only and flags['--fipo_safety_threshold'] == safety
        assert flags['--delta'] == '10' and flags['--sequence_parallel_size'] == '8'
        assert flags['--max_completion_length'] == '20480'
        assert int(flags['--generation_batch_size']) == 512 * int(flags['--num_generations'])
        assert commands[-1]['env']['NNODES'] == '16' and commands[-1]['env']['NPROC_PER_NODE'] == '8'


def test_every_recipe_is_listed_somewhere_tested():
    assert set(RECIPES) | RUN_FOR_REAL == {path.name for path in EXAMPLES.glob('*.sh')}
    assert len(RECIPES) >= 5
