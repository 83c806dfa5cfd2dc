"""``swift-fipo plot``: PNG charts of a run's ``logging.jsonl`` (or several runs on shared axes)."""

from __future__ import annotations

import bisect
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

from swift_fipo.viz.rundir import (LOGGING_FILE, RunDirError, find_run_file, finite_number, read_jsonl, run_label,
                                  step_of)

# (panel title, logged keys drawn in it). Related metrics share a panel; any other fipo/* key gets its own.
PANELS: tuple[tuple[str, tuple[str, ...]], ...] = (
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


@dataclass
class Run:
    label: str
    source: Path
    series: dict[str, tuple[list[int], list[float]]]
    """key -> (steps, values), finite values only, in step order."""


def load_run(run_dir: str | Path, label: Optional[str] = None) -> Run:
    """The plottable metrics of one run's newest logging.jsonl."""
    path = find_run_file(run_dir, LOGGING_FILE, hint='Give the --output_dir of a `swift rlhf` run.')
    series: dict[str, tuple[list[int], list[float]]] = {}
    last_step: Optional[int] = None
    for row in read_jsonl(path):
        step = step_of(row)
        if step is None:
            continue
        if last_step is not None and step < last_step:
            # A run resumed from a checkpoint logs again from that step on, into the same file: its rows
            # supersede the earlier ones from there, or every line would run back in time.
            _drop_from(series, step)
        last_step = step
        for key, value in row.items():
            number = finite_number(value) if _plottable(key) else None
            # matplotlib cannot scale an axis to +-1e308 (its range overflows): such values are skipped
            # like NaN; no metric of a real run comes near.
            if number is not None and abs(number) <= _LARGEST_PLOTTED:
                steps, values = series.setdefault(key, ([], []))
                if steps and steps[-1] == step:  # a second row of this step: the latest value counts
                    values[-1] = number
                else:
                    steps.append(step)
                    values.append(number)
    if not series:
        raise RunDirError(f'{path}: no logged training step with a reward, completion length or fipo/* '
                          'metric (is the run still starting, or was it not GRPO?).')
    return Run(label=label or run_label(run_dir), source=path, series=series)


def _drop_from(series: dict[str, tuple[list[int], list[float]]], step: int) -> None:
    """Remove every point at ``step`` or later (each series is in step order); a key left with no point
    is removed."""
    for key in list(series):
        steps, values = series[key]
        keep = bisect.bisect_left(steps, step)
        del steps[keep:], values[keep:]
        if not steps:
            del series[key]


def _plottable(key: str) -> bool:
    return (key.startswith('fipo/') and key not in _REDUNDANT) or any(key in keys for _, keys in PANELS)


def panels_for(runs: Sequence[Run]) -> list[tuple[str, tuple[str, ...]]]:
    """The panels with data in at least one run, known ones first, then unknown fipo/* keys."""
    present = {key for run in runs for key in run.series}
    panels = [(title, keys) for title, keys in PANELS if present.intersection(keys)]
    known = {key for _, keys in PANELS for key in keys}
    extra = sorted(present - known)
    if len(extra) > _MAX_EXTRA_PANELS:
        print(f'swift-fipo: note: {len(extra) - _MAX_EXTRA_PANELS} further fipo/* metrics not drawn '
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
    Figure, FigureCanvasAgg = _matplotlib()
    panels = panels_for(runs)
    rows = math.ceil(len(panels) / _COLUMNS)
    figure = Figure(figsize=(4.6 * _COLUMNS, 3.0 * rows), dpi=110, layout='constrained')
    FigureCanvasAgg(figure)
    colours = [f'C{index}' for index in range(10)]
    for index, (title, keys) in enumerate(panels):
        axes = figure.add_subplot(rows, _COLUMNS, index + 1)
        for run_index, run in enumerate(runs):
            for key_index, key in enumerate(keys):
                if key not in run.series:
                    continue
                steps, values = run.series[key]
                if len(runs) > 1:  # colour tells runs apart, line style tells keys apart
                    colour, style = colours[run_index % 10], _LINE_STYLES[key_index % len(_LINE_STYLES)]
                    name = _text(run.label if len(keys) == 1 else f'{run.label}: {_short(key)}')
                else:
                    colour, style, name = colours[key_index % 10], '-', _text(_short(key))
                axes.plot(steps, values, style, color=colour, marker='o', markersize=3, linewidth=1.4, label=name)
        axes.set_title(_text(title), fontsize=10)
        axes.set_xlabel('step', fontsize=8)
        axes.tick_params(labelsize=8)
        axes.grid(alpha=0.3)
        axes.xaxis.get_major_locator().set_params(integer=True)
        if len(runs) > 1 or len(keys) > 1:
            axes.legend(fontsize=7)
    names = ' vs '.join(run.label for run in runs)
    figure.suptitle(_text(f'{names}: FIPO metrics per step'), fontsize=12)
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


def plot(run_dirs: Sequence[str | Path], output: Optional[str | Path] = None,
         labels: Optional[Sequence[str]] = None) -> Path:
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
