#!/usr/bin/env python3
"""Mutation testing for swift-fipo: plant one small bug at a time and check that the fast tests notice.

Every mutant is planted in a private COPY of the repository (never in the working tree), and the fast
tests of the mutated module run against that copy with a per-mutant timeout. A mutant is *killed* when
a test fails (or the run times out), *survived* when every test passes. Survivors are printed with
their diff; those judged equivalent (no behaviour a user could observe changes) are listed in
``EQUIVALENT`` below with the reason, and are counted apart.

    .venv/bin/python scripts/mutate.py                      # the default sample (see --max)
    .venv/bin/python scripts/mutate.py --list               # the planted mutants, without running
    .venv/bin/python scripts/mutate.py --files swift_fipo/config.py --max 20
    .venv/bin/python scripts/mutate.py --only 17,42         # rerun some mutants by id

Run it with the Python of a virtual environment that has the test dependencies (``bash
scripts/setup.sh``); it runs before a release, never in CI (a run takes tens of minutes).

Mutation operators: comparison flips (< <=, > >=, == !=, is / is not, in / not in), arithmetic swaps
(+ -, * /, ** *), boolean swaps (and / or, & |, dropped not / ~), min <-> max (calls, methods,
keywords, the 'min' / 'max' reduction names), constants (True / False, numbers nudged), negated if /
while conditions, and dropped statements (replaced by ``pass``).
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import difflib
import io
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import tokenize
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

sys.path.insert(0, str(ROOT))
from swift_fipo.integrations.hosts import HOSTS  # noqa: E402  (the table of hosts: torch-free, imports no host)

# Modules mutated, and the fast test files run against each, quickest and most telling first (pytest
# stops at the first failure). `swift rlhf` runs (marker `cli`) are left out: they take minutes.
OPS_TESTS = ('tests/test_config.py', 'tests/test_ops_paper.py', 'tests/test_ops_loss.py', 'tests/test_ops_influence.py',
             'tests/test_ops_future_kl.py', 'tests/test_ops_api.py', 'tests/test_ops_precision.py')
SHARED_TESTS = ('tests/test_integrations_shared.py', 'tests/test_integrations_interception.py',
                'tests/test_integrations_hosts.py')
# Every host of the table is mutated, its subpackage against tests/test_integrations_<package>.py unless it
# needs more (the test files of a host run in a venv that has the host: --python .venv-verl/bin/python, ...).
HOST_TESTS: dict[str, tuple[str, ...]] = {
    'ms_swift': SHARED_TESTS + ('tests/test_integrations_ms_swift_gloo.py', 'tests/test_integrations_ms_swift_cli.py',
                                'tests/test_integrations_ms_swift.py', 'tests/test_integrations_megatron.py',
                                'tests/test_token_capture.py', 'tests/test_ops_influence.py'),
}


def host_tests(package: str) -> tuple[str, ...]:
    """The fast test files a host's code is mutated against."""
    return HOST_TESTS.get(package, (f'tests/test_integrations_{package}.py', ))


HOST_PACKAGES = tuple(host.package.rpartition('.')[2] for host in HOSTS)
MS_SWIFT_TESTS = host_tests('ms_swift')
# ms-swift 3.11 - 4.2.1 (no native FIPO): --python .venv-ms-swift-3.11.3/bin/python
LEGACY_TESTS = ('tests/test_integrations_ms_swift_layout.py', 'tests/test_integrations_ms_swift_legacy.py')
VIZ_TESTS = ('tests/test_viz_inspect.py', 'tests/test_viz_plot.py', 'tests/test_viz_fuzz.py')
TARGETS: dict[str, tuple[str, ...]] = {
    'swift_fipo/config.py': OPS_TESTS + ('tests/test_integrations_shared.py',
                                         'tests/test_integrations_ms_swift_cli.py'),
    'swift_fipo/ops/*.py': OPS_TESTS + ('tests/test_integrations_shared.py', 'tests/test_integrations_ms_swift.py',
                                        'tests/test_integrations_megatron.py'),
    'swift_fipo/integrations/*.py': MS_SWIFT_TESTS,
    **{f'swift_fipo/integrations/{package}/*.py': host_tests(package) for package in HOST_PACKAGES},
    'swift_fipo/integrations/ms_swift/legacy.py': LEGACY_TESTS,
    'swift_fipo/integrations/ms_swift/layout.py': LEGACY_TESTS,
    'swift_fipo/activation.py': ('tests/test_activation.py', ),
    'swift_fipo/cli.py': ('tests/test_cli_faults.py', ),
    'swift_fipo/viz/*.py': VIZ_TESTS,
}
PYTEST_ARGS = ('-x', '-q', '-p', 'no:cacheprovider', '--no-header', '-m', 'not cli')
# Imported once by the fork server of a test group, before any mutant: the slow third-party imports.
# ms-swift's GRPO trainer module deletes trl.GRPOTrainer.__init__, so the TRL group must not preload it.
PRELOAD = {'ms_swift': ('torch', 'pytest', 'swift.pipelines.base', 'swift.rlhf_trainers.grpo_trainer'),
           'ms-swift-3': ('torch', 'pytest', 'swift.llm.base', 'swift.trainers.rlhf_trainer.grpo_trainer'),
           'trl': ('torch', 'pytest', 'transformers', 'datasets', 'trl')}


def preload_for(tests: tuple[str, ...]) -> tuple[str, ...]:
    if tests == LEGACY_TESTS:  # ms-swift 3.x keeps the pipeline and trainer elsewhere (a 4.0 / 4.1 venv: --no-fork)
        return PRELOAD['ms-swift-3']
    host = next((package for package in HOST_PACKAGES if host_tests(package) == tests), 'ms_swift')
    return PRELOAD.get(host, ('torch', 'pytest'))


# Mutants judged equivalent after reading them: `file:enclosing function:stripped line:original->replacement`
# -> why no user-observable behaviour changes. Keep the reasons short and checkable.
_TWO_TUPLE = ("ms-swift's loss returns (loss, metrics) on every supported release (HF _compute_loss_and_metrics "
              'and Megatron loss_func): result[1] is result[-1], and the tuple/dict checks are all true')
_HF_WRAPPER = 'swift_fipo/integrations/ms_swift/hooks.py:_with_extra_metrics.compute_loss_and_metrics_with_fipo:'
_MEGATRON_WRAPPER = 'swift_fipo/integrations/ms_swift/hooks.py:_with_megatron_extra_metrics.loss_func_with_fipo:'
_RESULT_CHECK = 'if stats is None or not isinstance(result, tuple) or not isinstance(result[-1], dict)::'
EQUIVALENT: dict[str, str] = {
    'swift_fipo/integrations/verl/hooks.py:_validate_actor:updates_per_rollout = max(1, train_batch_size // mini_batch)'
    '://->/':
        "verl's worker asserts that the batch divides by the mini-batch (tensordict_utils.make_iterator), and for "
        'the small integers of a run a float quotient of a divisible pair is that integer: the no-op test agrees',
    "swift_fipo/config.py:real_number:return None  # no value to read (a meta tensor): the caller's refusal names "
    'the field:return None->pass':
        'falling through, value is still the tensor whose .item() failed, not a numbers.Real: the next check '
        'returns None all the same',
    'swift_fipo/ops/future_kl.py:_flush_subnormal:return torch.where(values.abs() < tiny, 0.0, values).to(dtype)'
    '.contiguous():<-><=':
        'also flushes a decay entry exactly equal to the smallest normal number (2**-126 in float32, reached only '
        'for gamma = 0.5 at distance 126): a change below 2**-126 relative, invisible in any weight',
    'swift_fipo/ops/future_kl.py:_future_sum:if length <= dense::<=-><':
        'a sequence of exactly the dense length takes the blocked path, which computes the same exact sums',
    'swift_fipo/ops/future_kl.py:_flush_subnormal:tiny = torch.finfo(dtype).tiny if dtype.is_floating_point else '
    '0.0:dtype.is_floating_point->not (dtype.is_floating_point)':
        'the decay matrices are only built in the dtype of the values, and discounted_future_sum refuses '
        'non-floating values before: the integer branch is never taken',
    'swift_fipo/ops/future_kl.py:_flush_subnormal:tiny = torch.finfo(dtype).tiny if dtype.is_floating_point else '
    '0.0:0.0->1.0': 'the integer branch is never taken (see above)',
    'swift_fipo/ops/influence.py:<module>:@functools.lru_cache(maxsize=16):16->17': 'a cache size: speed only',
    'swift_fipo/integrations/ms_swift/gloo_exit.py:<module>:GLOO_EXIT_GRACE_S = 0.5:0.5->0.75':
        'a duration (how long an exiting gloo process waits); the tests derive their bounds from it',
    'swift_fipo/integrations/ms_swift/token_capture.py:_completion_ids:return None:return None->pass':
        'the last statement of the function: falling off its end returns None as well',
    'swift_fipo/integrations/trl/trainer.py:_loss_source:return None:return None->pass':
        'the last statement of the function: falling off its end returns None as well',
    'swift_fipo/integrations/trl/trainer.py:check_trl_support:if logps_at < 0 or advantages_at < logps_at::0->1':
        'find() returns 0 only if the method source starts with the call, and it starts with "def"',
    'swift_fipo/integrations/interception.py:sequence_ratio:mean = torch.where(mask, log_ratio, 0.0).sum(-1) / '
    'mask.sum(-1).clamp(min=1):-->': 'log_ratio and mask are [B, T]: dim 1 is dim -1',
    'swift_fipo/integrations/interception.py:sequence_ratio:return torch.exp(mean).unsqueeze(-1):-->':
        'mean is [B]: unsqueeze(1) is unsqueeze(-1)',
    'swift_fipo/ops/influence.py:<module>:_LOG_RATIO_LIMIT = 1e30:1e30->1.5000000000000002e+30':
        'the stand-in for an infinite log-ratio only has to saturate exp() and keep sums finite; 1.5e30 does both',
    _HF_WRAPPER + _RESULT_CHECK + '-->': _TWO_TUPLE,
    _HF_WRAPPER + _RESULT_CHECK + 'or->and': _TWO_TUPLE + "; without stats (another loss type) the metrics hold no "
                                             "'fipo' dict and the result is returned unchanged a line later",
    _HF_WRAPPER + "fipo_metrics = result[-1].get('fipo'):-->": _TWO_TUPLE,
    _MEGATRON_WRAPPER + _RESULT_CHECK + '-->': _TWO_TUPLE,
    _MEGATRON_WRAPPER + _RESULT_CHECK + 'or->and': _TWO_TUPLE,
    _MEGATRON_WRAPPER + 'loss, metrics = result[0], result[-1]:-->': _TWO_TUPLE,
    "swift_fipo/integrations/ms_swift/hooks.py:_explicit_teacher:explicit = getattr(trainer, '_has_teacher_explicit', "
    "False):False->True":
        'the default is never used: the wrapper is applied only to classes with _setup_teacher, and every '
        'ms-swift that has it (4.4+, HF and Megatron) defines _has_teacher_explicit',
    'swift_fipo/integrations/versions.py:installed_version:return None:return None->pass':
        'the last statement of the function: falling off its end returns None as well',
    'swift_fipo/integrations/ms_swift/token_capture.py:_CaptureState:step: int = -1:-->':
        'the first step seen resets taken to 0, which it already is: starting from step 1 changes nothing',
    'swift_fipo/integrations/ms_swift/token_capture.py:_capture:if state.taken >= wanted::>=->>':
        'with the quota reached the mutant goes on with zero rows and appends an empty payload: the file is '
        'unchanged',
    "swift_fipo/integrations/sources.py:method_text:end = module_source.find('\\n    def ', start + 1):+->-":
        'searching from the character before `def` (an indentation space, or a newline followed by `def`, not by '
        'four spaces) cannot match there, so the same next method is found',
    'swift_fipo/integrations/ms_swift/legacy.py:_loss_mask:mask = mask & ~truncated.bool().unsqueeze(-1):-->':
        "ms-swift's truncated_mask is [B]: unsqueeze(1) is unsqueeze(-1)",
}

COMPARE_SWAPS = {'<': '<=', '<=': '<', '>': '>=', '>=': '>', '==': '!=', '!=': '==', 'is': 'is not',
                 'is not': 'is', 'in': 'not in', 'not in': 'in'}
BINARY_SWAPS = {'+': '-', '-': '+', '*': '/', '/': '*', '**': '*', '//': '/', '%': '//', '&': '|', '|': '&',
                '@': '*'}
EXTREME_SWAPS = {'min': 'max', 'max': 'min', 'amin': 'amax', 'amax': 'amin', 'minimum': 'maximum',
                 'maximum': 'minimum', 'gt': 'ge', 'ge': 'gt', 'lt': 'le', 'le': 'lt'}


@dataclasses.dataclass(frozen=True)
class Mutant:
    path: str
    start: tuple[int, int]  # (line, column) of the replaced text, 1-based lines
    end: tuple[int, int]
    original: str
    replacement: str
    kind: str

    @property
    def line(self) -> int:
        return self.start[0]

    def key(self, source: str) -> str:
        """Stable across edits elsewhere: file, enclosing function, the line's text, the change."""
        text = source.splitlines()[self.line - 1].strip()
        return f'{self.path}:{_scope(source, self.line)}:{text}:{self.original}->{self.replacement}'

    def apply(self, source: str) -> str:
        lines = source.splitlines(keepends=True)
        offsets = [0]
        for line in lines:
            offsets.append(offsets[-1] + len(line))
        begin = offsets[self.start[0] - 1] + self.start[1]
        finish = offsets[self.end[0] - 1] + self.end[1]
        assert source[begin:finish] == self.original, (self, source[begin:finish])
        return source[:begin] + self.replacement + source[finish:]


def _scope(source: str, line: int) -> str:
    """Qualified name of the innermost function or class around ``line`` ('<module>' if none)."""
    names: list[str] = []

    def visit(node: ast.AST, prefix: list[str]) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) \
                    and child.lineno <= line <= child.end_lineno:
                names[:] = prefix + [child.name]
                visit(child, names[:])
            else:
                visit(child, prefix)

    visit(ast.parse(source), [])
    return '.'.join(names) or '<module>'


def _position(lines: list[str], line: int, byte_column: int) -> tuple[int, int]:
    """ast counts columns in UTF-8 bytes; tokenize and the text, in characters."""
    return line, len(lines[line - 1].encode('utf-8')[:byte_column].decode('utf-8', errors='ignore'))


def _excluded_spans(tree: ast.AST, lines: list[str]) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """Annotations (not evaluated under `from __future__ import annotations`), docstrings and f-strings."""
    spans = []

    def add(node: ast.AST | None) -> None:
        if node is not None and hasattr(node, 'end_lineno'):
            spans.append((_position(lines, node.lineno, node.col_offset),
                          _position(lines, node.end_lineno, node.end_col_offset)))

    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            add(node.returns)
            for argument in node.args.args + node.args.kwonlyargs + node.args.posonlyargs:
                add(argument.annotation)
            for argument in (node.args.vararg, node.args.kwarg):
                add(argument.annotation if argument else None)
            positional = node.args.posonlyargs + node.args.args
            with_defaults = positional[len(positional) - len(node.args.defaults):]
            named_defaults = list(zip(with_defaults, node.args.defaults, strict=True))
            named_defaults += [(a, d) for a, d in zip(node.args.kwonlyargs, node.args.kw_defaults, strict=True)
                               if d is not None]
            for argument, default in named_defaults:
                if argument.arg == 'stacklevel':
                    add(default)
        elif isinstance(node, ast.AnnAssign):
            add(node.annotation)
        elif isinstance(node, ast.JoinedStr):
            add(node)
        elif isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name) \
                and node.value.id in ('Literal', 'Optional', 'Union', 'Callable', 'Sequence', 'Mapping'):
            add(node)  # a type expression outside an annotation (an alias): no run-time behaviour
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) \
                    and isinstance(first.value.value, str):
                add(first)
        # Error and warning texts, and warnings' stack levels, are not behaviour worth mutating.
        if isinstance(node, ast.Raise) and node.exc is not None:
            for argument in getattr(node.exc, 'args', []):
                add(argument)
        if isinstance(node, ast.keyword) and node.arg == 'stacklevel':
            add(node)
    return spans


def _inside(position: tuple[int, int], spans: list) -> bool:
    return any(start <= position < end for start, end in spans)


def _tokens(source: str) -> list[tokenize.TokenInfo]:
    return list(tokenize.generate_tokens(io.StringIO(source).readline))


def _operator_token(tokens: list[tokenize.TokenInfo], after: tuple[int, int], before: tuple[int, int],
                    texts: set[str]) -> tokenize.TokenInfo | None:
    """The first operator token between two positions (skipping closing brackets)."""
    for token in tokens:
        if after <= token.start and token.end <= before and token.string in texts:
            return token
    return None


def find_mutants(path: str, source: str) -> Iterator[Mutant]:
    tree = ast.parse(source)
    tokens = _tokens(source)
    lines = source.splitlines(keepends=True)
    excluded = _excluded_spans(tree, lines)

    def make(start, end, original, replacement, kind) -> Mutant | None:
        if _inside(start, excluded):
            return None
        return Mutant(path, start, end, original, replacement, kind)

    def end_of(node):
        return _position(lines, node.end_lineno, node.end_col_offset)

    def start_of(node):
        return _position(lines, node.lineno, node.col_offset)

    for node in ast.walk(tree):
        found: list[Mutant | None] = []
        if isinstance(node, ast.Compare):
            left = node.left
            for right in node.comparators:
                words = {'is', 'not', 'in', '<', '<=', '>', '>=', '==', '!='}
                between = [t for t in tokens if end_of(left) <= t.start and t.end <= start_of(right)
                           and t.string in words]
                if between:
                    text = ' '.join(t.string for t in between)
                    if text in COMPARE_SWAPS:
                        found.append(make(between[0].start, between[-1].end, source_text(lines, between[0].start,
                                                                                         between[-1].end),
                                          COMPARE_SWAPS[text], 'compare'))
                    if text in ('<', '>'):
                        found.append(make(between[0].start, between[0].end, text, '>' if text == '<' else '<',
                                          'compare'))
                left = right
        elif isinstance(node, ast.BinOp):
            token = _operator_token(tokens, end_of(node.left), start_of(node.right), set(BINARY_SWAPS))
            if token is not None:
                found.append(make(token.start, token.end, token.string, BINARY_SWAPS[token.string], 'arithmetic'))
        elif isinstance(node, ast.AugAssign):
            token = _operator_token(tokens, end_of(node.target), start_of(node.value),
                                    {f'{op}=' for op in BINARY_SWAPS})
            if token is not None:
                found.append(make(token.start, token.end, token.string, BINARY_SWAPS[token.string[:-1]] + '=',
                                  'arithmetic'))
        elif isinstance(node, ast.BoolOp):
            word = 'and' if isinstance(node.op, ast.And) else 'or'
            for previous, value in zip(node.values, node.values[1:], strict=False):
                token = _operator_token(tokens, end_of(previous), start_of(value), {word})
                if token is not None:
                    found.append(make(token.start, token.end, word, 'or' if word == 'and' else 'and', 'boolean'))
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.Not, ast.Invert, ast.USub)):
            # Drop the operator: `not x` -> `x`, `~x` -> `x`, `-x` -> `x`.
            found.append(make(start_of(node), start_of(node.operand), source_text(lines, start_of(node),
                                                                                   start_of(node.operand)),
                              '', 'boolean' if not isinstance(node.op, ast.USub) else 'arithmetic'))
        elif isinstance(node, ast.Constant) and type(node.value) in (bool, int, float):
            value = node.value
            if isinstance(value, bool):
                replacement = repr(not value)
            elif isinstance(value, int):
                replacement = repr(value + 1)
            else:
                replacement = repr(value * 1.5 if value else 1.0)
            found.append(make(start_of(node), end_of(node), source_text(lines, start_of(node), end_of(node)),
                              replacement, 'constant'))
        elif isinstance(node, ast.Constant) and node.value in ('min', 'max'):
            original = source_text(lines, start_of(node), end_of(node))
            found.append(make(start_of(node), end_of(node), original,
                              original.replace(node.value, EXTREME_SWAPS[node.value]), 'min/max'))
        elif isinstance(node, ast.Name) and node.id in ('min', 'max') and isinstance(node.ctx, ast.Load):
            found.append(make(start_of(node), end_of(node), node.id, EXTREME_SWAPS[node.id], 'min/max'))
        elif isinstance(node, ast.Attribute) and node.attr in EXTREME_SWAPS:
            token = _operator_token(tokens, end_of(node.value), end_of(node), {node.attr})
            if token is not None:
                found.append(make(token.start, token.end, node.attr, EXTREME_SWAPS[node.attr], 'min/max'))
        elif isinstance(node, ast.keyword) and node.arg in ('min', 'max') and hasattr(node, 'lineno'):
            token = _operator_token(tokens, start_of(node), start_of(node.value), {node.arg})
            if token is not None:
                found.append(make(token.start, token.end, node.arg, EXTREME_SWAPS[node.arg], 'min/max'))
        if isinstance(node, (ast.If, ast.While, ast.IfExp)):
            test = node.test
            original = source_text(lines, start_of(test), end_of(test))
            found.append(make(start_of(test), end_of(test), original, f'not ({original})', 'negate'))
        if isinstance(node, (ast.Assign, ast.AugAssign, ast.Expr, ast.Return, ast.Raise, ast.Delete)) \
                or (isinstance(node, ast.AnnAssign) and node.value is not None):
            found.extend(_dropped_statement(path, lines, node, excluded))
        for mutant in found:
            if mutant is not None and mutant.original != mutant.replacement:
                yield mutant


def _dropped_statement(path: str, lines: list[str], node: ast.stmt, excluded: list) -> list[Mutant]:
    """Replace a whole statement (all its lines) by `pass`, if it starts and ends its lines alone."""
    if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
        return []  # docstrings and bare constants
    start = _position(lines, node.lineno, node.col_offset)
    end = _position(lines, node.end_lineno, node.end_col_offset)
    before = lines[start[0] - 1][:start[1]]
    after = lines[end[0] - 1][end[1]:].strip()
    if before.strip() or (after and not after.startswith('#')):
        return []  # shares its line with other code
    if _inside(start, excluded):
        return []
    return [Mutant(path, start, end, source_text(lines, start, end), 'pass', 'statement')]


def source_text(lines: list[str], start: tuple[int, int], end: tuple[int, int]) -> str:
    if start[0] == end[0]:
        return lines[start[0] - 1][start[1]:end[1]]
    parts = [lines[start[0] - 1][start[1]:]] + lines[start[0]:end[0] - 1] + [lines[end[0] - 1][:end[1]]]
    return ''.join(parts)


def target_files(patterns: list[str]) -> dict[str, tuple[str, ...]]:
    """Relative path -> test files, for every file matched by the TARGETS patterns (specific beats glob)."""
    chosen: dict[str, tuple[str, ...]] = {}
    for pattern, tests in sorted(TARGETS.items(), key=lambda item: '*' not in item[0], reverse=False):
        for path in sorted(ROOT.glob(pattern)):
            relative = str(path.relative_to(ROOT))
            if relative.endswith('__init__.py'):
                continue
            chosen[relative] = tests
    if patterns:
        chosen = {path: tests for path, tests in chosen.items() if any(Path(path).match(p) or path == p
                                                                       for p in patterns)}
    return chosen


def plant_all(files: dict[str, tuple[str, ...]]) -> list[Mutant]:
    mutants = []
    for path in files:
        source = (ROOT / path).read_text()
        for mutant in find_mutants(path, source):
            try:
                ast.parse(mutant.apply(source))
            except SyntaxError:
                continue
            mutants.append(mutant)
    unique = {(m.path, m.start, m.end, m.replacement): m for m in mutants}
    return sorted(unique.values(), key=lambda m: (m.path, m.start, m.kind, m.replacement))


def sample(mutants: list[Mutant], limit: int, seed: int) -> list[Mutant]:
    """At most ``limit`` mutants, drawn evenly across (file, kind) groups, deterministically."""
    if limit <= 0 or len(mutants) <= limit:
        return mutants
    rng = random.Random(seed)
    groups: dict[tuple[str, str], list[Mutant]] = {}
    for mutant in mutants:
        groups.setdefault((mutant.path, mutant.kind), []).append(mutant)
    for members in groups.values():
        rng.shuffle(members)
    picked: list[Mutant] = []
    while len(picked) < limit:
        for key in sorted(groups):
            if groups[key] and len(picked) < limit:
                picked.append(groups[key].pop())
    return sorted(picked, key=lambda m: (m.path, m.start, m.kind, m.replacement))


def copy_repository(destination: Path) -> None:
    ignore = shutil.ignore_patterns('.venv*', '.git', '__pycache__', '*.pyc', '.ci-logs', '.pytest_cache', 'output',
                                    'runs', 'build', 'dist', '*.egg-info')
    for name in ('swift_fipo', 'tests', 'examples', 'benchmarks', 'docs', 'scripts'):
        if (ROOT / name).exists():
            shutil.copytree(ROOT / name, destination / name, ignore=ignore)
    for name in ('pyproject.toml', 'README.md', 'swift_fipo.pth'):
        if (ROOT / name).exists():
            shutil.copy2(ROOT / name, destination / name)


def _classify(returncode: int) -> str:
    # pytest: 0 all passed, 1 some failed, 2 interrupted (a collection error: the mutant broke an import);
    # 3 internal error, 4 usage error, 5 nothing collected: the harness's fault, not the mutant's.
    return {0: 'passed', 1: 'failed', 2: 'failed', -9: 'timeout'}.get(returncode, 'error')


def run_tests(python: str, copy: Path, tests: tuple[str, ...], timeout: float) -> tuple[str, float, str]:
    """One fresh pytest process: ('passed' | 'failed' | 'timeout' | 'error', seconds, output tail)."""
    env = {**os.environ, 'PYTHONPATH': str(copy), 'PYTHONDONTWRITEBYTECODE': '1'}
    env.pop('SWIFT_FIPO_DISABLE', None)
    began = time.monotonic()
    try:
        result = subprocess.run([python, '-m', 'pytest', *PYTEST_ARGS, *tests], cwd=copy, env=env,
                                capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return 'timeout', time.monotonic() - began, ''
    return _classify(result.returncode), time.monotonic() - began, (result.stdout + result.stderr)[-3000:]


class ForkServer:
    """A test-venv Python that imported the slow third-party modules once, with swift-fipo's activation
    off, and forks a child per test run. The child drops every swift_fipo module, activates the
    (mutated) copy as the .pth would (patching the ms-swift modules already imported) and runs pytest.
    Saves the ~15 s of torch + ms-swift imports per mutant."""

    def __init__(self, python: str, copy: Path, preload: tuple[str, ...]) -> None:
        env = {**os.environ, 'PYTHONPATH': str(copy), 'PYTHONDONTWRITEBYTECODE': '1', 'SWIFT_FIPO_DISABLE': '1',
               'OMP_NUM_THREADS': '1'}
        self.process = subprocess.Popen([python, str(Path(__file__).resolve()), '--serve', *preload], cwd=copy,
                                        env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        ready = self.process.stdout.readline()
        if ready.strip() != 'ready':
            raise RuntimeError(f'fork server did not start: {ready!r}')

    def run(self, tests: tuple[str, ...], timeout: float) -> tuple[str, float, str]:
        self.process.stdin.write(json.dumps({'args': [*PYTEST_ARGS, *tests], 'timeout': timeout}) + '\n')
        self.process.stdin.flush()
        reply = json.loads(self.process.stdout.readline())
        return _classify(reply['returncode']), reply['seconds'], reply['output']

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=60)


def serve(preload: list[str]) -> None:
    """The fork server's loop (runs in the test venv): one JSON request per line on stdin."""
    import importlib
    import signal
    # ROOT went on sys.path for the table of hosts; a child must import the mutated copy (PYTHONPATH), never the
    # working tree (else every mutant runs the unmutated code, or trips the tests' stale-install check).
    while str(ROOT) in sys.path:
        sys.path.remove(str(ROOT))
    for name in preload:
        importlib.import_module(name)
    print('ready', flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        log = tempfile.NamedTemporaryFile(prefix='mutant-', suffix='.log', delete=False)
        began = time.monotonic()
        pid = os.fork()
        if pid == 0:  # child: never returns
            try:
                os.dup2(log.fileno(), 1)
                os.dup2(log.fileno(), 2)
                os.environ.pop('SWIFT_FIPO_DISABLE', None)
                for name in [name for name in sys.modules if name == 'swift_fipo' or name.startswith('swift_fipo.')]:
                    del sys.modules[name]
                import pytest

                import swift_fipo.activation
                swift_fipo.activation.activate()
                code = pytest.main(request['args'])
            except BaseException:  # noqa: B036 -- report anything, then leave without running atexit hooks
                import traceback
                traceback.print_exc()
                code = 3
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(int(code))
        deadline = began + request['timeout']
        status = None
        while status is None:
            done, raw = os.waitpid(pid, os.WNOHANG)
            if done:
                status = os.waitstatus_to_exitcode(raw)
            elif time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                status = -9
            else:
                time.sleep(0.05)
        seconds = time.monotonic() - began
        log.close()
        output = Path(log.name).read_text(errors='replace')[-3000:]
        os.unlink(log.name)
        print(json.dumps({'returncode': status, 'seconds': seconds, 'output': output}), flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--python', default=sys.executable, help='interpreter of the test venv (default: this one)')
    parser.add_argument('--files', nargs='*', default=[], help='only these target files (paths or globs)')
    parser.add_argument('--max', type=int, default=240, help='sample at most this many mutants (0: all)')
    parser.add_argument('--seed', type=int, default=15)
    parser.add_argument('--timeout', type=float, default=0, help='per-mutant seconds (default: 3 x baseline + 30)')
    parser.add_argument('--only', default='', help='comma-separated mutant ids (as --list prints them)')
    parser.add_argument('--list', action='store_true', help='print the sampled mutants and exit')
    parser.add_argument('--no-fork', action='store_true', help='a fresh pytest process per mutant (slower)')
    parser.add_argument('--serve', nargs='*', help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve is not None:
        serve(args.serve)
        return 0

    files = target_files(args.files)
    mutants = sample(plant_all(files), args.max, args.seed)
    numbered = list(enumerate(mutants, start=1))
    if args.only:
        wanted = {int(item) for item in args.only.split(',') if item.strip()}
        numbered = [(number, mutant) for number, mutant in numbered if number in wanted]
    sources = {path: (ROOT / path).read_text() for path in files}
    if args.list:
        for number, mutant in numbered:
            print(f'{number:4d} {mutant.path}:{mutant.line} [{mutant.kind}] {mutant.original!r} -> '
                  f'{mutant.replacement!r}')
        print(f'{len(numbered)} mutants')
        return 0

    began = time.monotonic()
    results: list[tuple[int, Mutant, str, float]] = []
    not_run: list[int] = []
    with tempfile.TemporaryDirectory(prefix='swift-fipo-mutants-') as directory:
        copy = Path(directory)
        copy_repository(copy)
        servers: dict[tuple[str, ...], ForkServer] = {}

        def run(tests: tuple[str, ...], timeout: float) -> tuple[str, float, str]:
            if args.no_fork:
                return run_tests(args.python, copy, tests, timeout)
            preload = preload_for(tests)
            if preload not in servers:
                servers[preload] = ForkServer(args.python, copy, preload)
            return servers[preload].run(tests, timeout)

        try:
            baselines: dict[tuple[str, ...], float] = {}
            for tests in sorted({files[mutant.path] for _, mutant in numbered}):
                status, seconds, output = run(tests, timeout=1800)
                if status == 'passed' and ' passed' not in output:
                    status = 'no test ran'  # all skipped or not collected here: mutants would all survive
                if status != 'passed':
                    # E.g. a host this venv does not have: run those files with --python of one that has it.
                    print(f'baseline FAILED for {" ".join(tests)} ({status}): their mutants are not run\n'
                          f'{output[-1500:]}', flush=True)
                    continue
                baselines[tests] = seconds
                print(f'baseline {seconds:6.1f} s  {" ".join(tests)}', flush=True)
            not_run = [number for number, mutant in numbered if files[mutant.path] not in baselines]
            numbered = [(number, mutant) for number, mutant in numbered if files[mutant.path] in baselines]
            if not numbered:
                return 2
            for number, mutant in numbered:
                tests = files[mutant.path]
                timeout = args.timeout or 3 * baselines[tests] + 30
                target = copy / mutant.path
                target.write_text(mutant.apply(sources[mutant.path]))
                try:
                    status, seconds, output = run(tests, timeout)
                finally:
                    target.write_text(sources[mutant.path])
                verdict = {'failed': 'killed', 'timeout': 'killed', 'passed': 'survived', 'error': 'error'}[status]
                results.append((number, mutant, verdict, seconds))
                print(f'{number:4d} {verdict:8s} {seconds:6.1f} s  {mutant.path}:{mutant.line} [{mutant.kind}] '
                      f'{mutant.original!r} -> {mutant.replacement!r}', flush=True)
                if verdict == 'error':
                    print('     ' + output.strip().replace('\n', '\n     ')[-1500:])
        finally:
            for server in servers.values():
                server.close()

    survivors = [(n, m) for n, m, verdict, _ in results if verdict == 'survived']
    equivalent = [(n, m) for n, m in survivors if m.key(sources[m.path]) in EQUIVALENT]
    live = [(n, m) for n, m in survivors if m.key(sources[m.path]) not in EQUIVALENT]
    errors = [n for n, _, verdict, _ in results if verdict == 'error']
    killed = sum(verdict == 'killed' for _, _, verdict, _ in results)
    for number, mutant in live:
        source = sources[mutant.path]
        diff = difflib.unified_diff(source.splitlines(keepends=True), mutant.apply(source).splitlines(keepends=True),
                                    f'a/{mutant.path}', f'b/{mutant.path}', n=1)
        print(f'\nSURVIVED #{number} [{mutant.kind}]  key: {mutant.key(source)!r}\n{"".join(diff)}', end='')
    if equivalent:
        print('\nSurvivors judged equivalent:')
        for number, mutant in equivalent:
            print(f'  #{number} {mutant.path}:{mutant.line}: {EQUIVALENT[mutant.key(sources[mutant.path])]}')
    considered = len(results) - len(errors) - len(equivalent)
    score = 100.0 * killed / considered if considered else 100.0
    print(f'\nmutants: {len(results)}, killed: {killed}, survived: {len(live)}, equivalent: {len(equivalent)}, '
          f'errors: {len(errors)}{f", not run (baseline failed): {len(not_run)}" if not_run else ""}; '
          f'killed {score:.1f}% of the non-equivalent ones; wall time {time.monotonic() - began:.0f} s')
    return 0 if not live and not errors and not not_run else 1


if __name__ == '__main__':
    sys.exit(main())
