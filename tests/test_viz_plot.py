"""`swift-fipo plot`: finding a run's logging.jsonl, reading it, drawing one run or a comparison, and
clear one-line errors (never a traceback) for missing or malformed run directories."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import need

from swift_fipo import cli
from swift_fipo.viz import plot as viz_plot
from swift_fipo.viz.rundir import find_run_file, run_label, step_of

need('matplotlib')
numpy = need('numpy')
Image = need('PIL.Image', 'pillow')


def fipo_row(step: int, steps: int = 4) -> dict:
    reuse = step % 2 == 0  # even steps reuse the rollout: the weights move off 1
    row = {
        'loss': -0.1 * step, 'fipo/future_kl_mean': -0.5 if reuse else 0.0,
        'fipo/influence_weight_mean': 1.1 if reuse else 1.0, 'fipo/influence_weight_min': 1.0,
        'fipo/influence_weight_max': 1.2 if reuse else 1.0, 'fipo/raw_weight_mean': 1.8 if reuse else 1.0,
        'fipo/clipped_high_ratio': 0.5 if reuse else 0.0, 'fipo/safety_keep_ratio': 1.0,
        'fipo/safety_fired_ratio': 0.0, 'fipo/neg_adv_ratio_p99': float('nan'),
        'global_step/max_steps': f'{step}/{steps}',
    }
    if not reuse:  # ms-swift logs reward and completion length on generation steps only
        row.update({'reward': 0.5 + 0.1 * step, 'completions/mean_length': 20.0 + step})
    return row


def write_run(directory: Path, rows: list[dict], version: str = 'v0-20260101-120000') -> Path:
    path = directory / 'output' / version / 'logging.jsonl'
    path.parent.mkdir(parents=True, exist_ok=True)
    # ms-swift ends the file with a summary row that has no step: it must be ignored.
    summary = {'train_runtime': 6.9, 'log_history': rows}
    path.write_text(''.join(json.dumps(row) + '\n' for row in [*rows, summary]))
    return path


def coloured_pixels(png: Path) -> int:
    pixels = numpy.asarray(Image.open(png).convert('RGB')).astype(int)
    return int(((pixels.max(axis=2) - pixels.min(axis=2)) > 60).sum())


def test_newest_logging_jsonl_under_the_output_dir(tmp_path):
    old = write_run(tmp_path, [fipo_row(1)], 'v0-20260101-120000')
    new = write_run(tmp_path, [fipo_row(1)], 'v1-20260102-120000')
    os.utime(old, (2_000_000_000, 2_000_000_000))  # newer by time, whatever the names say
    os.utime(new, (1_000_000_000, 1_000_000_000))
    for given in (tmp_path, tmp_path / 'output', old.parent, old):
        assert find_run_file(given, 'logging.jsonl') == (new if given == new.parent else old)
    assert run_label(old.parent) == 'output/v0-20260101-120000'
    assert run_label(tmp_path / 'output') == f'{tmp_path.name}/output'


def test_steps_are_read_from_hf_and_megatron_rows():
    assert step_of({'global_step/max_steps': '7/20'}) == 7
    assert step_of({'iteration': '3/9'}) == 3
    assert step_of({'train_runtime': 1.0}) is None and step_of({'global_step/max_steps': 'x'}) is None


def test_one_run_series_and_png(tmp_path):
    write_run(tmp_path, [fipo_row(step) for step in range(1, 5)])
    run = viz_plot.load_run(tmp_path)
    assert run.series['reward'] == ([1, 3], [pytest.approx(0.6), pytest.approx(0.8)])
    assert run.series['fipo/influence_weight_mean'][0] == [1, 2, 3, 4]
    assert 'fipo/neg_adv_ratio_p99' not in run.series  # NaN only: nothing to draw
    assert 'loss' not in run.series and 'fipo/safety_keep_ratio' not in run.series
    titles = [title for title, _ in viz_plot.panels_for([run])]
    assert titles[:4] == ['reward', 'completion length (mean tokens)', 'Future-KL (mean)', 'influence weight']

    assert cli.main(['plot', str(tmp_path)]) == 0
    png = tmp_path / 'output' / 'v0-20260101-120000' / 'fipo_metrics.png'
    width, height = Image.open(png).size
    assert width > 1000 and height > 600
    assert coloured_pixels(png) > 2000  # lines were drawn, not just empty axes


def test_unknown_fipo_metrics_get_a_panel(tmp_path):
    write_run(tmp_path, [{**fipo_row(1), 'fipo/new_metric': 0.3}])
    assert ('fipo/new_metric', ('fipo/new_metric', )) in viz_plot.panels_for([viz_plot.load_run(tmp_path)])


def test_dapo_vs_fipo_comparison(tmp_path, capsys):
    dapo_rows = [{key: value for key, value in fipo_row(step).items() if not key.startswith('fipo/')}
                 for step in range(1, 5)]
    write_run(tmp_path / 'dapo', dapo_rows)
    write_run(tmp_path / 'fipo', [fipo_row(step) for step in range(1, 5)])
    out = tmp_path / 'compare.png'
    assert cli.main(['plot', str(tmp_path / 'dapo'), str(tmp_path / 'fipo'), '-o', str(out)]) == 0
    assert str(out) in capsys.readouterr().out
    runs = [viz_plot.load_run(tmp_path / name) for name in ('dapo', 'fipo')]
    assert [run.label for run in runs] == ['dapo', 'fipo']
    assert not any(key.startswith('fipo/') for key in runs[0].series)
    # Both runs' rewards share one panel: two colours there, so more coloured pixels than one run alone.
    single = tmp_path / 'single.png'
    assert cli.main(['plot', str(tmp_path / 'fipo'), '-o', str(single)]) == 0
    assert coloured_pixels(out) > coloured_pixels(single)


def test_same_labels_are_made_distinct(tmp_path):
    write_run(tmp_path / 'a', [fipo_row(1)])
    write_run(tmp_path / 'b', [fipo_row(1)])
    out = viz_plot.plot([tmp_path / 'a' / 'output', tmp_path / 'b' / 'output'], tmp_path / 'x.png',
                        labels=['run', 'run'])
    assert out.is_file()


@pytest.mark.parametrize('make, message', [
    (lambda root: root / 'missing', 'no such file or directory'),
    (lambda root: root, 'no logging.jsonl in it or below it'),
    (lambda root: _write(root / 'out' / 'logging.jsonl', '{"loss": 1}\nnot json\n{"loss": 2}\n'),
     'logging.jsonl:2: not valid JSON'),
    (lambda root: _write(root / 'out' / 'logging.jsonl', '[1, 2]\n'), 'expected a JSON object'),
    (lambda root: _write(root / 'out' / 'logging.jsonl', '{"train_runtime": 1.0}\n'), 'no logged training step'),
    (lambda root: _write(root / 'notes.txt', 'hello'), 'expected a run directory or a logging.jsonl file'),
])
def test_bad_run_dirs_fail_with_one_clear_line(tmp_path, capsys, make, message):
    target = make(tmp_path)
    assert cli.main(['plot', str(target)]) == 2
    err = capsys.readouterr().err
    assert err.startswith('swift-fipo plot: error: ') and message in err and len(err.splitlines()) == 1


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path.parent if path.name == 'logging.jsonl' else path


def test_a_half_written_last_line_is_skipped(tmp_path, capsys):
    path = write_run(tmp_path, [fipo_row(1), fipo_row(2)])
    path.write_text(path.read_text().rsplit('\n', 2)[0] + '\n{"loss": -0.3, "fipo/fut')  # still being written
    assert viz_plot.load_run(tmp_path).series['fipo/future_kl_mean'][0] == [1, 2]
    assert 'unfinished last line' in capsys.readouterr().err


def test_command_line_errors_have_no_traceback_and_matplotlib_loads_lazily(tmp_path):
    command = [sys.executable, '-m', 'swift_fipo.cli', 'plot', str(tmp_path / 'nowhere')]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    assert result.returncode == 2 and 'Traceback' not in result.stderr
    assert 'no such file or directory' in result.stderr
    probe = ('import sys, swift_fipo.cli, swift_fipo.viz.plot, swift_fipo.viz.inspect; '
             "print('matplotlib' in sys.modules)")
    assert subprocess.run([sys.executable, '-c', probe], capture_output=True, text=True,
                          check=True).stdout.strip() == 'False'


def test_a_resumed_run_is_drawn_forward_in_time(tmp_path):
    """A run resumed from its step-3 checkpoint appends steps 4.. again to the same logging.jsonl: from
    there its rows replace the earlier ones, so every line is monotone in step."""
    first = [{'fipo/future_kl_mean': 0.1 * step, 'fipo/clipped_low_ratio': 0.5, 'global_step/max_steps': f'{step}/8'}
             for step in range(1, 7)]
    resumed = [{'fipo/future_kl_mean': -0.1 * step, 'global_step/max_steps': f'{step}/8'} for step in range(4, 9)]
    write_run(tmp_path, first + resumed)
    run = viz_plot.load_run(tmp_path)
    steps, values = run.series['fipo/future_kl_mean']
    assert steps == list(range(1, 9))
    assert values == pytest.approx([0.1, 0.2, 0.3, -0.4, -0.5, -0.6, -0.7, -0.8])
    # Only the first attempt logged this one: its points from step 4 on belong to the superseded run.
    assert run.series['fipo/clipped_low_ratio'] == ([1, 2, 3], [0.5] * 3)
    assert cli.main(['plot', str(tmp_path)]) == 0


def test_rows_of_one_step_merge_with_the_latest_value_winning(tmp_path):
    rows = [{'reward': 0.5, 'fipo/future_kl_mean': 0.1, 'global_step/max_steps': '1/2'},
            {'reward': 0.7, 'global_step/max_steps': '1/2'},  # a second row for step 1 (e.g. logged again)
            {'reward': 0.9, 'global_step/max_steps': '2/2'}]
    write_run(tmp_path, rows)
    run = viz_plot.load_run(tmp_path)
    assert run.series['reward'] == ([1, 2], [0.7, 0.9])
    assert run.series['fipo/future_kl_mean'] == ([1], [0.1])


@pytest.mark.skipif(not os.path.exists('/dev/full'), reason='needs /dev/full')
def test_a_failed_write_names_the_file(tmp_path, capsys):
    """ENOSPC from the write itself (a chart name linked to /dev/full) carries no file name: the message adds it."""
    write_run(tmp_path, [fipo_row(1)])
    chart = tmp_path / 'chart.png'
    chart.symlink_to('/dev/full')
    assert cli.main(['plot', str(tmp_path), '-o', str(chart)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f'swift-fipo plot: error: {chart}: cannot write the chart: No space left on device')
    assert len(err.splitlines()) == 1


def test_a_parent_that_is_a_file_is_named(tmp_path, capsys):
    path = write_run(tmp_path, [fipo_row(1)])
    assert cli.main(['plot', str(tmp_path), '-o', str(path / 'chart.png')]) == 2
    err = capsys.readouterr().err
    assert f'{path / "chart.png"}: cannot write the chart: ' in err and str(path) in err and len(err.splitlines()) == 1


@pytest.fixture
def figures(monkeypatch: pytest.MonkeyPatch) -> list:
    """Every matplotlib Figure the plot builds, kept for the test to read its legends and lines."""
    built = []
    real = viz_plot._matplotlib

    def recording() -> tuple:
        Figure, FigureCanvasAgg = real()

        class RecordedFigure(Figure):
            def __init__(self, *args, **kwargs) -> None:
                super().__init__(*args, **kwargs)
                built.append(self)
        return RecordedFigure, FigureCanvasAgg

    monkeypatch.setattr(viz_plot, '_matplotlib', recording)
    return built


def legends(figure) -> dict[str, list[str]]:
    """Panel title -> its legend's entries."""
    shown = {}
    for axes in figure.axes:
        legend = axes.get_legend()
        if legend is not None:
            shown[axes.get_title()] = [text.get_text() for text in legend.get_texts()]
    return shown


@pytest.mark.parametrize('labels, names', [([], ['dapo', 'fipo']), (['baseline', 'FIPO 7b'], ['baseline', 'FIPO 7b']),
                                           (['run', 'run'], ['run', 'run (2)'])])
def test_a_comparison_labels_each_run_with_its_own_name(tmp_path, figures, labels, names):
    dapo_rows = [{key: value for key, value in fipo_row(step).items() if not key.startswith('fipo/')}
                 for step in range(1, 5)]
    write_run(tmp_path / 'dapo', dapo_rows)
    write_run(tmp_path / 'fipo', [fipo_row(step) for step in range(1, 5)])
    arguments = ['plot', str(tmp_path / 'dapo'), str(tmp_path / 'fipo'), '-o', str(tmp_path / 'c.png')]
    assert cli.main([*arguments, *(f'--label={label}' for label in labels)]) == 0
    (figure, ) = [built for built in figures if built.axes]  # output_path makes an empty one too
    shown = legends(figure)
    assert shown['reward'] == names and shown['completion length (mean tokens)'] == names
    # Only the FIPO run has the weights: each of its keys under its own run's name.
    assert shown['influence weight'] == [f'{names[1]}: influence_weight_{kind}' for kind in ('mean', 'min', 'max')]
    reward = next(axes for axes in figure.axes if axes.get_title() == 'reward')
    assert [line.get_color() for line in reward.get_lines()] == ['C0', 'C1']  # one colour per run
    assert figure.get_suptitle() == f'{names[0]} vs {names[1]}: FIPO metrics per step'


def test_one_run_tells_the_keys_of_a_panel_apart_by_colour(tmp_path, figures):
    write_run(tmp_path / 'fipo', [fipo_row(step) for step in range(1, 5)])
    assert cli.main(['plot', str(tmp_path / 'fipo'), '-o', str(tmp_path / 'one.png')]) == 0
    (figure, ) = [built for built in figures if built.axes]
    weights = next(axes for axes in figure.axes if axes.get_title() == 'influence weight')
    assert [line.get_color() for line in weights.get_lines()] == ['C0', 'C1', 'C2']
    assert legends(figure)['influence weight'] == [f'influence_weight_{kind}' for kind in ('mean', 'min', 'max')]


def test_labels_with_a_dollar_or_a_lone_surrogate_are_drawn_as_given(tmp_path, figures):
    """'$' would start matplotlib's mathtext (a parse error when the chart is drawn) and a lone surrogate
    (an undecodable directory name) breaks its font code: both labels are drawn, '$' literally."""
    for name in ('a', 'b'):
        write_run(tmp_path / name, [fipo_row(step) for step in range(1, 5)])
    arguments = ['plot', str(tmp_path / 'a'), str(tmp_path / 'b'), '-o', str(tmp_path / 'c.png')]
    assert cli.main([*arguments, '--label=$x_1', '--label=run \udcff']) == 0
    assert (tmp_path / 'c.png').stat().st_size > 0
    (figure, ) = [built for built in figures if built.axes]
    assert legends(figure)['reward'] == [r'\$x_1', 'run ?']
