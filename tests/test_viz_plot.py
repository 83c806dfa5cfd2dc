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


# --- each panel draws the metric its title names -------------------------------------------------------

# What a user reads in a panel's title, and the keys (logging.jsonl or eval.jsonl) whose values it must show,
# written out here rather than taken from viz_plot.PANELS: a swap there must fail this table.
TITLED_KEYS = {
    'held-out greedy accuracy': ['heldout/greedy_accuracy'],
    'held-out pass@1 (sampled)': ['heldout/pass@1'],
    'held-out completion length (mean)': ['heldout/mean_length'],
    'held-out chain share': ['heldout/chain_share'],
    'reward': ['reward'],
    'completion length (mean tokens)': ['completions/mean_length'],
    'Future-KL (mean)': ['fipo/future_kl_mean'],
    'influence weight': ['fipo/influence_weight_mean', 'fipo/influence_weight_min', 'fipo/influence_weight_max'],
    'exp(Future-KL) before clipping (mean)': ['fipo/raw_weight_mean'],
    'clipped fraction': ['fipo/clipped_high_ratio', 'fipo/clipped_low_ratio'],
    'safety rule fired (fraction)': ['fipo/safety_fired_ratio'],
    'filtered / dropped (fraction)': ['fipo/filtered_ratio', 'fipo/dropped_response_ratio'],
    'ratio p99, negative advantage': ['fipo/neg_adv_ratio_p99'],
}
ALL_KEYS = [key for keys in TITLED_KEYS.values() for key in keys]
EVAL_KEYS = [key for key in ALL_KEYS if key.startswith('heldout/')]


def coded_value(key: str, step: int, offset: float = 0.0) -> float:
    """A value that says which key it belongs to: 1000 per key, plus the step, plus a small offset."""
    return 1000.0 * (ALL_KEYS.index(key) + 1) + step + offset


def key_of(value: float, step: float) -> str:
    return ALL_KEYS[round((value - step) / 1000.0) - 1]


def write_coded_run(directory: Path, offset: float = 0.0, steps: int = 4) -> None:
    """A run logging every known key (logging.jsonl) and every held-out key (eval.jsonl), each its own value."""
    rows = [{'global_step/max_steps': f'{step}/{steps}',
             **{key: coded_value(key, step, offset) for key in ALL_KEYS if key not in EVAL_KEYS}}
            for step in range(1, steps + 1)]
    write_run(directory, rows)
    evaluations = [{'global_step': step, **{key: coded_value(key, step, offset) for key in EVAL_KEYS}}
                   for step in range(0, steps + 1, 2)]
    (directory / 'eval.jsonl').write_text(''.join(json.dumps(row) + '\n' for row in evaluations))


def drawn_keys(figure) -> dict[str, list[tuple[str, str]]]:
    """Panel title -> (key its values encode, legend label) per line drawn in it."""
    panels = {}
    for axes in figure.axes:
        lines = []
        for line in axes.get_lines():
            steps, values = line.get_xdata(), line.get_ydata()
            keys = {key_of(value, step) for step, value in zip(steps, values, strict=False)}
            assert len(keys) == 1, (axes.get_title(), keys)  # one line, one metric
            lines.append((keys.pop(), line.get_label()))
        panels[axes.get_title()] = lines
    return panels


@pytest.mark.parametrize('mode', ['one run', 'compared runs', 'groups'])
def test_each_panel_draws_the_metric_its_title_names(tmp_path, figures, mode):
    for name, offset in (('a', 0.0), ('b', 0.25), ('c', -0.25), ('d', 0.5)):
        write_coded_run(tmp_path / name, offset)
    out = str(tmp_path / 'chart.png')
    arguments = {'one run': ['plot', str(tmp_path / 'a')],
                 'compared runs': ['plot', str(tmp_path / 'a'), str(tmp_path / 'd')],
                 'groups': ['plot', '--group', 'G1', *(str(tmp_path / name) for name in 'abc'),
                            '--group', 'G2', str(tmp_path / 'd')]}[mode]
    assert cli.main([*arguments, '-o', out]) == 0
    (figure, ) = [built for built in figures if built.axes]
    panels = drawn_keys(figure)
    assert list(panels) == list(TITLED_KEYS)  # every panel, held-out ones first
    for title, keys in TITLED_KEYS.items():
        lines = panels[title]
        copies = 1 if mode == 'one run' else 2  # one line per run or group
        assert sorted(key for key, _ in lines) == sorted(keys * copies), title
        if len(keys) > 1:  # the legend names each line's own key
            for key, label in lines:
                assert label.endswith(key.split('/', 1)[1]), (title, key, label)


# --- groups: a mean line and a band per group ------------------------------------------------------------

def reward_rows(values: dict[int, float], steps: int = 6) -> list[dict]:
    return [{'reward': value, 'global_step/max_steps': f'{step}/{steps}'} for step, value in values.items()]


def band_of(axes, line) -> dict[float, tuple[float, float]]:
    """Step -> (low, high) of the band drawn in ``line``'s colour in ``axes`` (read from the polygon)."""
    colour = matplotlib_colors().to_rgb(line.get_color())
    (band, ) = [collection for collection in axes.collections
                if tuple(collection.get_facecolor()[0][:3]) == pytest.approx(colour)]
    edges: dict[float, list[float]] = {}
    for x, y in band.get_paths()[0].vertices:
        edges.setdefault(float(x), []).append(float(y))
    return {x: (min(ys), max(ys)) for x, ys in edges.items()}


def matplotlib_colors():
    import matplotlib.colors
    return matplotlib.colors


def test_groups_draw_the_mean_and_one_std_across_their_runs_at_each_step(tmp_path, figures):
    """Three DAPO seeds (one stopped after step 4, one resumed from step 3 with other values) and two FIPO
    seeds: at each step the line is the mean of the runs that have the step, the band +-1 sample std."""
    write_run(tmp_path / 'dapo-1', reward_rows({1: 0.1, 2: 0.2, 3: 0.3, 4: 0.4, 5: 0.5, 6: 0.6}))
    write_run(tmp_path / 'dapo-2', reward_rows({1: 0.3, 2: 0.1, 3: 0.5, 4: 0.2}))  # shorter
    resumed = reward_rows({1: 0.2, 2: 0.6, 3: 0.9, 4: 0.9, 5: 0.9}) + reward_rows({4: 0.0, 5: 0.7, 6: 0.2})
    write_run(tmp_path / 'dapo-3', resumed)  # steps 4-5 of the first attempt are superseded
    write_run(tmp_path / 'fipo-1', reward_rows({2: 0.5, 4: 0.7, 6: 0.9}))
    write_run(tmp_path / 'fipo-2', reward_rows({2: 0.7, 4: 0.7, 6: 0.5}))
    dapo = {1: [0.1, 0.3, 0.2], 2: [0.2, 0.1, 0.6], 3: [0.3, 0.5, 0.9], 4: [0.4, 0.2, 0.0], 5: [0.5, 0.7],
            6: [0.6, 0.2]}
    fipo = {2: [0.5, 0.7], 4: [0.7, 0.7], 6: [0.9, 0.5]}
    out = viz_plot.plot_groups({'DAPO': [tmp_path / f'dapo-{seed}' for seed in (1, 2, 3)],
                                'FIPO': [tmp_path / 'fipo-1', tmp_path / 'fipo-2']}, tmp_path / 'groups.png')
    assert out == tmp_path / 'groups.png' and coloured_pixels(out) > 2000
    (figure, ) = [built for built in figures if built.axes]
    reward = next(axes for axes in figure.axes if axes.get_title() == 'reward')
    lines = {line.get_label(): line for line in reward.get_lines()}
    assert list(lines) == ['DAPO (3 runs)', 'FIPO (2 runs)']
    assert lines['DAPO (3 runs)'].get_color() != lines['FIPO (2 runs)'].get_color()
    for label, by_hand in (('DAPO (3 runs)', dapo), ('FIPO (2 runs)', fipo)):
        line = lines[label]
        assert list(line.get_xdata()) == sorted(by_hand)
        means = [numpy.mean(by_hand[step]) for step in sorted(by_hand)]
        assert list(line.get_ydata()) == pytest.approx(means)
        band = band_of(reward, line)
        assert sorted(band) == sorted(by_hand)
        for step, values in by_hand.items():
            spread = numpy.std(values, ddof=1)
            expected = (numpy.mean(values) - spread, numpy.mean(values) + spread)
            assert band[step] == pytest.approx(expected), (label, step)
    assert 'band +-1 std' in figure.get_suptitle()


def test_a_step_only_one_run_reached_has_no_spread():
    runs = [viz_plot.Run('a', Path('a'), {'reward': ([1, 2], [0.2, 0.4])}),
            viz_plot.Run('b', Path('b'), {'reward': ([1], [0.6])})]
    band = viz_plot.group_band(runs, 'reward')
    assert band.steps == [1, 2] and band.runs == [2, 1]
    assert band.mean == pytest.approx([0.4, 0.4])
    assert band.std == pytest.approx([numpy.std([0.2, 0.6], ddof=1), 0.0])  # 0.283: two runs at step 1
    assert viz_plot.group_band(runs, 'fipo/future_kl_mean') is None


@pytest.mark.parametrize('arguments, message', [
    (['--group', 'DAPO'], '--group DAPO: no run directory after the label (--group LABEL RUN_DIR [RUN_DIR ...])'),
    (['--group', 'DAPO', '{root}/a', '--group', 'DAPO', '{root}/b'], '--group DAPO: this label is given twice'),
    (['--group', 'DAPO', '{root}/a', '{root}/empty'], '--group DAPO: {root}/empty: no logging.jsonl in it or below it'),
    (['--group', 'DAPO', '{root}/a', '{root}/missing'], '--group DAPO: {root}/missing: no such file or directory'),
    (['--group', 'DAPO', '{root}/a', '{root}/a/output'], '--group DAPO: {root}/a/output is the same run as a'),
    (['--group', ' ', '{root}/a'], 'a group needs a non-empty label'),
    (['{root}/b', '--group', 'DAPO', '{root}/a'],
     '{root}/b: give run directories either alone or after a --group LABEL'),
    (['--label', 'x', '--group', 'DAPO', '{root}/a'], '--label names single runs; a group is named by the first value'),
    ([], 'give a RUN_DIR, or groups of them: --group LABEL RUN_DIR [RUN_DIR ...]'),
])
def test_bad_groups_fail_with_one_line_naming_the_argument(tmp_path, capsys, arguments, message):
    write_run(tmp_path / 'a', [fipo_row(1)])
    write_run(tmp_path / 'b', [fipo_row(1)])
    (tmp_path / 'empty').mkdir()
    given = [argument.format(root=tmp_path) for argument in arguments]
    assert cli.main(['plot', *given, '-o', str(tmp_path / 'out.png')]) == 2
    err = capsys.readouterr().err
    assert err.startswith('swift-fipo plot: error: ') and len(err.splitlines()) == 1, err
    assert message.format(root=tmp_path) in err, err
    assert not (tmp_path / 'out.png').exists()


def test_a_group_error_from_the_real_command_has_no_traceback(tmp_path):
    write_run(tmp_path / 'a', [fipo_row(1)])
    command = [sys.executable, '-m', 'swift_fipo.cli', 'plot', '--group', 'DAPO', str(tmp_path / 'a'),
               '--group', 'FIPO', str(tmp_path / 'nothing-here')]
    result = subprocess.run(command, capture_output=True, text=True, check=False, timeout=120)
    assert result.returncode == 2 and 'Traceback' not in result.stderr
    assert result.stderr.strip() == (f'swift-fipo plot: error: --group FIPO: {tmp_path / "nothing-here"}: '
                                     'no such file or directory.')


def test_groups_default_to_a_chart_in_the_directory_holding_every_run(tmp_path, capsys):
    for name in ('dapo-1', 'dapo-2', 'fipo-1'):
        write_run(tmp_path / 'study' / name, [fipo_row(step) for step in range(1, 5)])
    study = tmp_path / 'study'
    assert cli.main(['plot', '--group', 'DAPO', str(study / 'dapo-1'), str(study / 'dapo-2'),
                     '--group', 'FIPO', str(study / 'fipo-1')]) == 0
    assert capsys.readouterr().out.strip() == f'wrote {study / "fipo_groups.png"}'
    assert coloured_pixels(study / 'fipo_groups.png') > 2000


# --- eval.jsonl: held-out results a user's evaluation writes ----------------------------------------

def write_eval(directory: Path, rows: list[dict]) -> Path:
    path = directory / 'eval.jsonl'
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(''.join(json.dumps(row) + '\n' for row in rows))
    return path


@pytest.mark.parametrize('where', ['beside logging.jsonl', 'in the --output_dir', 'in the directory given'])
def test_eval_jsonl_is_read_beside_or_above_logging_jsonl(tmp_path, where):
    logging_file = write_run(tmp_path, [fipo_row(step) for step in range(1, 5)])
    directory = {'beside logging.jsonl': logging_file.parent, 'in the --output_dir': tmp_path / 'output',
                 'in the directory given': tmp_path}[where]
    write_eval(directory, [{'global_step': 0, 'heldout/greedy_accuracy': 0.25, 'heldout/pass@1': 0.2},
                           {'global_step': 4, 'heldout/greedy_accuracy': 0.5, 'heldout/pass@1': 0.4,
                            'heldout/my_metric': 3, 'note': 'text is not drawn'}])
    run = viz_plot.load_run(tmp_path)
    assert run.series['heldout/greedy_accuracy'] == ([0, 4], [0.25, 0.5])
    assert run.series['heldout/my_metric'] == ([4], [3.0])
    assert 'note' not in run.series and 'global_step' not in run.series
    titles = [title for title, _ in viz_plot.panels_for([run])]
    assert titles[:3] == ['held-out greedy accuracy', 'held-out pass@1 (sampled)', 'reward']
    assert titles[-1] == 'heldout/my_metric'  # an unknown key gets a panel of its own


def test_eval_jsonl_outside_the_directory_given_is_not_read(tmp_path):
    """Given one ms-swift version directory, an eval.jsonl of the --output_dir above it is another scope."""
    logging_file = write_run(tmp_path, [fipo_row(1)])
    write_eval(tmp_path / 'output', [{'global_step': 1, 'heldout/greedy_accuracy': 0.5}])
    assert 'heldout/greedy_accuracy' not in viz_plot.load_run(logging_file.parent).series
    assert 'heldout/greedy_accuracy' in viz_plot.load_run(tmp_path).series


def test_eval_jsonl_beside_a_symlinked_logging_jsonl_is_the_links_neighbour(tmp_path):
    elsewhere = write_run(tmp_path / 'elsewhere', [fipo_row(1)])
    write_eval(elsewhere.parent, [{'global_step': 1, 'heldout/greedy_accuracy': 0.9}])
    link = tmp_path / 'run' / 'logging.jsonl'
    link.parent.mkdir()
    link.symlink_to(elsewhere)
    write_eval(link.parent, [{'global_step': 1, 'heldout/greedy_accuracy': 0.1}])
    assert viz_plot.load_run(tmp_path / 'run').series['heldout/greedy_accuracy'] == ([1], [0.1])


def test_eval_jsonl_of_a_resumed_run_is_superseded_like_logging_jsonl(tmp_path):
    write_run(tmp_path, [fipo_row(step) for step in range(1, 5)])
    first = [{'global_step': step, 'heldout/greedy_accuracy': 0.1 * step} for step in (0, 2, 4)]
    again = [{'global_step': step, 'heldout/greedy_accuracy': 0.2 * step} for step in (2, 4, 6)]
    write_eval(tmp_path, first + again)
    assert viz_plot.load_run(tmp_path).series['heldout/greedy_accuracy'] == ([0, 2, 4, 6],
                                                                              [0.0, 0.4, 0.8, pytest.approx(1.2)])


@pytest.mark.parametrize('row, message', [
    ({'heldout/pass@1': 0.5}, 'eval.jsonl: entry 1: "global_step" must be an integer >= 0, got nothing'),
    ({'global_step': '3', 'heldout/pass@1': 0.5}, '"global_step" must be an integer >= 0, got str 3'),
    ({'global_step': -1}, '"global_step" must be an integer >= 0, got int -1'),
    ({'global_step': 2, 'reward': 0.5}, 'eval.jsonl: "reward" is also a metric of'),
])
def test_a_bad_eval_jsonl_fails_with_one_line_naming_it(tmp_path, capsys, row, message):
    write_run(tmp_path, [fipo_row(1)])
    write_eval(tmp_path, [row])
    assert cli.main(['plot', str(tmp_path), '-o', str(tmp_path / 'x.png')]) == 2
    err = capsys.readouterr().err
    assert err.startswith('swift-fipo plot: error: ') and message in err and len(err.splitlines()) == 1, err
