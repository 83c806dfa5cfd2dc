"""``swift-fipo plot``: PNG charts of a run's ``logging.jsonl`` (and ``eval.jsonl``), several runs on
shared axes, or groups of runs (e.g. the seeds of DAPO against those of FIPO) as a mean line with a band."""

from __future__ import annotations

import math
import os
import statistics
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from swift_fipo.viz.rundir import (
    EVAL_FILE,
    LOGGING_FILE,
    RunDirError,
    find_run_file,
    finite_number,
    read_jsonl,
    run_label,
    step_of,
    supersede_resumed,
)

# (panel title, logged keys drawn in it). Related metrics share a panel; any other fipo/* key, and any other
# key of eval.jsonl, gets its own. Held-out results (eval.jsonl) first: they are what a study is about.
PANELS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ('held-out greedy accuracy', ('heldout/greedy_accuracy', )),
    ('held-out pass@1 (sampled)', ('heldout/pass@1', )),
    ('held-out completion length (mean)', ('heldout/mean_length', )),
    ('held-out chain share', ('heldout/chain_share', )),
    ('reward', ('reward', )),
    ('completion length (mean tokens)', ('completions/mean_length', )),
    ('Future-KL (mean)', ('fipo/future_kl_mean', )),
    ('influence weight', ('fipo/influence_weight_mean', 'fipo/influence_weight_min', 'fipo/influence_weight_max')),
    ('exp(Future-KL) before clipping (mean)', ('fipo/raw_weight_mean', )),
    ('clipped fraction', ('fipo/clipped_high_ratio', 'fipo/clipped_low_ratio')),
    ('safety rule fired (fraction)', ('fipo/safety_fired_ratio', )),
    ('filtered / dropped (fraction)', ('fipo/filtered_ratio', 'fipo/dropped_response_ratio')),
    ('ratio p99, negative advantage', ('fipo/neg_adv_ratio_p99', )),
)
# 1 - safety_fired_ratio: a panel of its own would only mirror that one.
_REDUNDANT = {'fipo/safety_keep_ratio'}
_COLUMNS = 3
_LARGEST_PLOTTED = 1e300
# Panels for fipo/* keys the plot does not know: a file with thousands of them must not make a figure
# larger than matplotlib can render (2**16 pixels a side).
_MAX_EXTRA_PANELS = 24
_MAX_TEXT = 80
_LINE_STYLES = ('-', '--', ':', '-.')
# eval.jsonl: the step of a row; every other finite number in it is a metric.
_EVAL_STEP = 'global_step'
_LARGEST_STEP = 2**53
_BAND_ALPHA = 0.18
_MARKED_POINTS = 40
BAND_MEANING = "mean over each group's runs per step, band +-1 std across them"


@dataclass
class Run:
    label: str
    source: Path
    series: dict[str, tuple[list[int], list[float]]]
    """key -> (steps, values), finite values only, in step order."""


def load_run(run_dir: str | Path, label: str | None = None) -> Run:
    """The plottable metrics of one run: its newest logging.jsonl, and the eval.jsonl beside it (or in a
    directory above it, up to ``run_dir``) when a user's evaluation wrote one."""
    path = find_run_file(run_dir, LOGGING_FILE, hint='Give the --output_dir of a `swift rlhf` run.')
    series: dict[str, tuple[list[int], list[float]]] = {}
    # A run resumed from a checkpoint logs again from that step on, into the same file: its rows supersede
    # the earlier ones from there, or every line would run back in time.
    stepped = [(step, row) for row in read_jsonl(path) if (step := step_of(row)) is not None]  # not the summary
    for step, row in supersede_resumed(stepped, _first):
        _add_row(series, step, {key: value for key, value in row.items() if _plottable(key)})
    evaluation = eval_file(run_dir, path)
    if evaluation is not None:
        for key, points in _eval_series(evaluation).items():
            if key in series:
                raise RunDirError(f'{evaluation}: "{key}" is also a metric of {path}; give it another name.')
            series[key] = points
    if not series:
        raise RunDirError(f'{path}: no logged training step with a reward, completion length or fipo/* '
                          'metric (is the run still starting, or was it not GRPO?).')
    return Run(label=label or run_label(run_dir), source=path, series=series)


def _first(pair: tuple[int, dict[str, Any]]) -> tuple[int]:
    """The position of a (step, row) pair in the file's order of steps."""
    return (pair[0], )


def _add_row(series: dict[str, tuple[list[int], list[float]]], step: int, row: dict[str, Any]) -> None:
    """Add the finite numbers of ``row`` at ``step`` (rows come in step order)."""
    for key, value in row.items():
        number = finite_number(value)
        # matplotlib cannot scale an axis to +-1e308 (its range overflows): such values are skipped like
        # NaN; no metric of a real run comes near.
        if number is not None and abs(number) <= _LARGEST_PLOTTED:
            steps, values = series.setdefault(key, ([], []))
            if steps and steps[-1] == step:  # a second row of this step: the latest value counts
                values[-1] = number
            else:
                steps.append(step)
                values.append(number)


def eval_file(run_dir: str | Path, logging_file: Path) -> Path | None:
    """The eval.jsonl of the run whose logging.jsonl is ``logging_file``: beside it, else in the nearest
    directory above it up to ``run_dir`` (a user's script may write to ms-swift's --output_dir)."""
    # Paths as found, made absolute but not resolved: a symlinked logging.jsonl counts where its link is.
    top = Path(os.path.abspath(run_dir))
    top = top.parent if top.is_file() else top
    directory = Path(os.path.abspath(logging_file)).parent
    while True:
        candidate = directory / EVAL_FILE
        if candidate.is_file():
            return candidate
        if directory == top or top not in directory.parents:  # the second: never climb past the file system root
            return None
        directory = directory.parent


def _eval_series(path: Path) -> dict[str, tuple[list[int], list[float]]]:
    """eval.jsonl: one JSON object per evaluated step, ``global_step`` (an integer >= 0) and any metrics."""
    rows = read_jsonl(path)
    for number, row in enumerate(rows, start=1):
        step = row.get(_EVAL_STEP)
        if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step <= _LARGEST_STEP:
            shown = 'nothing' if step is None else f'{type(step).__name__} {str(step)[:40]}'
            raise RunDirError(f'{path}: entry {number}: "{_EVAL_STEP}" must be an integer >= 0, got {shown}.')
    series: dict[str, tuple[list[int], list[float]]] = {}
    for step, row in supersede_resumed([(row[_EVAL_STEP], row) for row in rows], _first):
        _add_row(series, step, {key: value for key, value in row.items() if key != _EVAL_STEP})
    return series


def _plottable(key: str) -> bool:
    """Whether a logging.jsonl key is drawn: the known metrics and every fipo/* one."""
    return (key.startswith('fipo/') and key not in _REDUNDANT) or any(key in keys for _, keys in PANELS)


def panels_for(runs: Sequence[Run]) -> list[tuple[str, tuple[str, ...]]]:
    """The panels with data in at least one run, known ones first, then unknown fipo/* and eval.jsonl keys."""
    present = {key for run in runs for key in run.series}
    panels = [(title, keys) for title, keys in PANELS if present.intersection(keys)]
    known = {key for _, keys in PANELS for key in keys}
    extra = sorted(present - known)
    if len(extra) > _MAX_EXTRA_PANELS:
        print(f'swift-fipo: note: {len(extra) - _MAX_EXTRA_PANELS} further metrics not drawn '
              f'(at most {_MAX_EXTRA_PANELS} beyond the known ones)', file=sys.stderr)
    panels += [(key, (key, )) for key in extra[:_MAX_EXTRA_PANELS]]
    return panels


def _text(value: str) -> str:
    """A label or title as matplotlib must get it: '$' would start mathtext (a parse error on '$x'),
    a lone surrogate (invalid UTF-8 in a directory name or a JSON string) breaks its font code."""
    value = value.encode('utf-8', 'replace').decode('utf-8').replace('$', r'\$')
    return value if len(value) <= _MAX_TEXT else value[:_MAX_TEXT - 3] + '...'


def plot_runs(runs: Sequence[Run], output: Path) -> Path:
    """Draw every panel for every run (one colour per run when comparing) into one PNG."""
    def draw(axes: Any, keys: tuple[str, ...]) -> None:
        for run_index, run in enumerate(runs):
            for key_index, key in enumerate(keys):
                if key not in run.series:
                    continue
                steps, values = run.series[key]
                if len(runs) > 1:  # colour tells runs apart, line style tells keys apart
                    colour, style = _colour(run_index), _LINE_STYLES[key_index % len(_LINE_STYLES)]
                    name = _text(run.label if len(keys) == 1 else f'{run.label}: {_short(key)}')
                else:
                    colour, style, name = _colour(key_index), '-', _text(_short(key))
                axes.plot(steps, values, style, color=colour, marker='o', markersize=3, linewidth=1.4, label=name,
                          gid=key)

    names = ' vs '.join(run.label for run in runs)
    return _draw(panels_for(runs), draw, len(runs) > 1, f'{names}: FIPO metrics per step', output)


@dataclass
class Group:
    label: str
    runs: list[Run]


@dataclass
class Band:
    """One metric of a group, aligned by step: at each step the runs that logged it there."""
    steps: list[int]
    mean: list[float]
    std: list[float]
    """Sample standard deviation across the runs at the step (n - 1 in the denominator; 0 for one run)."""
    runs: list[int]
    """How many runs have the step: fewer where a run is shorter or lacks it."""


def group_band(runs: Sequence[Run], key: str) -> Band | None:
    """Mean and spread of ``key`` over ``runs`` at each step any of them logged it; None if none did."""
    by_step: dict[int, list[float]] = {}
    for run in runs:
        if key in run.series:
            for step, value in zip(*run.series[key], strict=False):
                by_step.setdefault(step, []).append(value)
    if not by_step:
        return None
    steps = sorted(by_step)
    # fmean/stdev are exact to rounding; an overflow (values near 1e300) leaves that step's band out.
    means = [_finite_or_nan(statistics.fmean, by_step[step]) for step in steps]
    spreads = [_finite_or_nan(statistics.stdev, by_step[step]) if len(by_step[step]) > 1 else 0.0 for step in steps]
    return Band(steps=steps, mean=means, std=spreads, runs=[len(by_step[step]) for step in steps])


def _finite_or_nan(reduce: Callable[[list[float]], float], values: list[float]) -> float:
    try:
        result = reduce(values)
    except OverflowError:
        return math.nan
    return result if math.isfinite(result) else math.nan


def plot_group_runs(groups: Sequence[Group], output: Path) -> Path:
    """Draw every panel with one colour per group: the group's mean as a line, +-1 std across its runs
    as a band around it (line style tells apart the keys that share a panel)."""
    def draw(axes: Any, keys: tuple[str, ...]) -> None:
        for group_index, group in enumerate(groups):
            for key_index, key in enumerate(keys):
                band = group_band(group.runs, key)
                if band is None:
                    continue
                colour, style = _colour(group_index), _LINE_STYLES[key_index % len(_LINE_STYLES)]
                name = f'{group.label} ({len(group.runs)} run{"s" if len(group.runs) > 1 else ""})'
                low = [mean - std for mean, std in zip(band.mean, band.std, strict=False)]
                high = [mean + std for mean, std in zip(band.mean, band.std, strict=False)]
                axes.fill_between(band.steps, low, high, color=colour, alpha=_BAND_ALPHA, linewidth=0,
                                  gid=f'band {group_index} {key}')
                # Markers show where the points are; on a long run they would only blot the line.
                marker = 'o' if len(band.steps) <= _MARKED_POINTS else ''
                axes.plot(band.steps, band.mean, style, color=colour, marker=marker, markersize=2.5, linewidth=1.4,
                          label=_text(name if len(keys) == 1 else f'{name}: {_short(key)}'),
                          gid=f'mean {group_index} {key}')

    runs = [run for group in groups for run in group.runs]
    names = ' vs '.join(group.label for group in groups)
    return _draw(panels_for(runs), draw, True, f'{names}: {BAND_MEANING}', output)


def _colour(index: int) -> str:
    return f'C{index % 10}'


def _draw(panels: Sequence[tuple[str, tuple[str, ...]]], draw: Callable[[Any, tuple[str, ...]], None],
          comparing: bool, title: str, output: Path) -> Path:
    """One PNG with a panel per (title, keys), each filled by ``draw(axes, keys)``."""
    Figure, FigureCanvasAgg = _matplotlib()
    rows = math.ceil(len(panels) / _COLUMNS)
    figure = Figure(figsize=(4.6 * _COLUMNS, 3.0 * rows), dpi=110, layout='constrained')
    FigureCanvasAgg(figure)
    for index, (panel_title, keys) in enumerate(panels):
        axes = figure.add_subplot(rows, _COLUMNS, index + 1)
        draw(axes, keys)
        axes.set_title(_text(panel_title), fontsize=10)
        axes.set_xlabel('step', fontsize=8)
        axes.tick_params(labelsize=8)
        axes.grid(alpha=0.3)
        axes.xaxis.get_major_locator().set_params(integer=True)
        if comparing or len(keys) > 1:
            axes.legend(fontsize=7)
    figure.suptitle(_text(title), fontsize=12)
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(output, format=output.suffix[1:].lower())
    except (ValueError, OverflowError) as error:  # values or text matplotlib cannot lay out
        raise RunDirError(f'cannot draw the chart: {error}') from None
    except OSError as error:  # some errors (ENOSPC on /dev/full) carry no file name of their own
        reason = error.strerror or str(error)
        if error.filename is not None and str(error.filename) != str(output):  # e.g. a parent that is a file
            reason += f': {error.filename}'
        raise RunDirError(f'{output}: cannot write the chart: {reason}.') from None
    return output


def _matplotlib() -> tuple[Any, Any]:
    """(Figure, FigureCanvasAgg), imported only for this command. Figure/FigureCanvasAgg directly rather
    than pyplot: no global backend is chosen or changed."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise RunDirError('swift-fipo plot needs matplotlib: pip install matplotlib') from None
    return Figure, FigureCanvasAgg


def output_path(output: str | Path) -> Path:
    """Where ``-o`` writes: the name as given when it ends in a format matplotlib writes (.png,
    .pdf, .svg, ...), else that name with ``.png`` added (as matplotlib itself would)."""
    Figure, FigureCanvasAgg = _matplotlib()
    path = Path(output)
    if path.name in ('', '.', '..') or path.is_dir():
        raise RunDirError(f'{output}: is a directory; -o needs a file name.')
    formats = FigureCanvasAgg(Figure()).get_supported_filetypes()
    return path if path.suffix[1:].lower() in formats else path.with_name(path.name + '.png')


def _short(key: str) -> str:
    return key.split('/', 1)[-1]


def plot(run_dirs: Sequence[str | Path], output: str | Path | None = None,
         labels: Sequence[str] | None = None) -> Path:
    """Chart one run, or compare several on shared axes. Returns the PNG written.

    Default output: ``fipo_metrics.png`` beside the (first) run's logging.jsonl, or
    ``fipo_compare.png`` there when comparing.
    """
    if not run_dirs:
        raise RunDirError('give at least one run directory.')
    labels = list(labels or [])
    if len(labels) > len(run_dirs):
        raise RunDirError(f'{len(labels)} labels for {len(run_dirs)} runs.')
    runs = [load_run(run_dir, labels[index] if index < len(labels) else None)
            for index, run_dir in enumerate(run_dirs)]
    seen: dict[str, int] = {}
    for run in runs:  # two runs both called "output" still need distinct legend entries
        seen[run.label] = seen.get(run.label, 0) + 1
        if seen[run.label] > 1:
            run.label = f'{run.label} ({seen[run.label]})'
    if output is None:
        output = runs[0].source.parent / ('fipo_metrics.png' if len(runs) == 1 else 'fipo_compare.png')
    return plot_runs(runs, output_path(output))


GroupsArgument = Mapping[str, Sequence[str | Path]] | Sequence[tuple[str, Sequence[str | Path]]]


def plot_groups(groups: GroupsArgument, output: str | Path | None = None) -> Path:
    """Overlay groups of runs, e.g. ``{'DAPO': [seed dirs...], 'FIPO': [seed dirs...]}``: per group and
    metric, the mean over its runs at each step (the runs that have that step) and a band of +-1 standard
    deviation across them. Returns the PNG written; default ``fipo_groups.png`` in the directory that holds
    all the runs.

    ``groups`` is a mapping or a sequence of (label, run directories) pairs; every error names the group.
    """
    pairs = list(groups.items()) if isinstance(groups, Mapping) else list(groups)
    if not pairs:
        raise RunDirError('give at least one --group LABEL RUN_DIR [RUN_DIR ...].')
    seen: set[str] = set()
    for label, run_dirs in pairs:  # the arguments' shape first, before any file is read
        if not isinstance(label, str) or not label.strip():
            raise RunDirError(f'--group {label!r}: a group needs a non-empty label (--group LABEL RUN_DIR ...).')
        if label in seen:
            raise RunDirError(f'--group {label}: this label is given twice; each group needs its own.')
        seen.add(label)
        if isinstance(run_dirs, (str, Path)) or not run_dirs:
            raise RunDirError(f'--group {label}: no run directory after the label (--group LABEL RUN_DIR '
                              '[RUN_DIR ...]).')
    loaded = []
    for label, run_dirs in pairs:
        runs: list[Run] = []
        for run_dir in run_dirs:
            try:
                run = load_run(run_dir)
            except RunDirError as error:
                raise RunDirError(f'--group {label}: {error}') from None
            twin = next((earlier for earlier in runs if earlier.source.resolve() == run.source.resolve()), None)
            if twin is not None:
                raise RunDirError(f'--group {label}: {run_dir} is the same run as {twin.label} ({run.source}); '
                                  'it would count twice.')
            runs.append(run)
        loaded.append(Group(label=label, runs=runs))
    if output is None:
        directories = [run.source.parent if run.source == Path(run_dir) else Path(run_dir)
                       for group in loaded for run, run_dir in zip(group.runs, dict(pairs)[group.label], strict=False)]
        output = Path(os.path.commonpath([str(directory.resolve()) for directory in directories])) / 'fipo_groups.png'
    return plot_group_runs(loaded, output_path(output))
