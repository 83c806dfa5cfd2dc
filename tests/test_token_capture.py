"""--fipo_log_tokens: the per-token capture, with a stand-in trainer (both ms-swift loss-call layouts,
the step/rank/bounds rules) and once through the real `swift rlhf` command line, followed by
`swift-fipo plot` and `swift-fipo inspect` on that run."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from conftest import need

from swift_fipo import FIPOConfig, compute_fipo_influence
from swift_fipo.integrations.interception import existing_interception, interception_of
from swift_fipo.integrations.ms_swift import token_capture
from swift_fipo.integrations.settings import RunSettings, attach_settings


class WordTokenizer:
    """Decodes id i as "w<i> ", so a line's text shows which ids were captured."""

    def decode(self, ids: list[int]) -> str:
        return ''.join(f'w{token} ' for token in ids)


# --fipo_log_tokens N of the trainers make_trainer builds; set per test by the log_tokens fixture.
_REQUESTED = {'count': 0}


def make_trainer(tmp_path: Path, global_step: int = 0, logging_steps: Any = 1, main: bool = True,
                 training: bool = True) -> SimpleNamespace:
    args = SimpleNamespace(output_dir=str(tmp_path), logging_steps=logging_steps)
    attach_settings(args, RunSettings(capture_completions=_REQUESTED['count']))
    return SimpleNamespace(
        args=args,
        state=SimpleNamespace(global_step=global_step, max_steps=10),
        accelerator=SimpleNamespace(is_main_process=main),
        model=SimpleNamespace(training=training),
        processing_class=WordTokenizer(),
    )


_CONFIG = FIPOConfig(clip_range=0.2)  # frozen: one instance serves every call


def make_batch(batch: int = 3, prompt: int = 5, length: int = 6, seed: int = 0,
               config: FIPOConfig = _CONFIG) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(100, 200, (batch, prompt + length), generator=generator)
    completion_mask = torch.ones(batch, length, dtype=torch.bool)
    completion_mask[0, 4:] = False  # a short first completion: padding after it
    advantages = torch.tensor([1.5, -0.5, 0.25][:batch])
    log_ratio = 0.3 * torch.randn(batch, length, generator=generator)
    _, stats = compute_fipo_influence(log_ratio, completion_mask, advantages, config)
    return dict(input_ids=input_ids, completion_mask=completion_mask, advantages=advantages, stats=stats)


@pytest.fixture
def log_tokens(monkeypatch: pytest.MonkeyPatch):
    def set_count(count: int) -> None:
        monkeypatch.setitem(_REQUESTED, 'count', count)
    return set_count


def read_lines(tmp_path: Path) -> list[dict]:
    path = tmp_path / token_capture.FILE_NAME
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def call_46(trainer: SimpleNamespace, data: dict) -> None:
    """ms-swift 4.6: _compute_loss_and_metrics(model, model_inputs, grpo_batch)."""
    grpo_batch = SimpleNamespace(completion_mask=data['completion_mask'], advantages=data['advantages'])
    token_capture.capture(trainer, data['stats'], (torch.nn.Linear(1, 1), {'input_ids': data['input_ids']},
                                                   grpo_batch), {})


def test_off_by_default_does_nothing(tmp_path, monkeypatch):
    monkeypatch.setitem(_REQUESTED, 'count', 0)
    trainer = make_trainer(tmp_path)
    call_46(trainer, make_batch())
    state = existing_interception(trainer)
    assert read_lines(tmp_path) == [] and (state is None or state.token_capture is None)


def test_ms_swift_46_layout_writes_tokens_with_their_values(tmp_path, log_tokens):
    log_tokens(2)
    data = make_batch()
    call_46(make_trainer(tmp_path, global_step=4), data)
    lines = read_lines(tmp_path)
    assert [(line['step'], line['index']) for line in lines] == [(5, 0), (5, 1)]  # step being trained = 4 + 1
    stats = data['stats']
    for row, line in enumerate(lines):
        positions = data['completion_mask'][row].nonzero().flatten().tolist()
        ids = data['input_ids'][row, -6:][positions].tolist()  # the completion frame: the last T columns
        assert [token['id'] for token in line['tokens']] == ids
        assert [token['text'] for token in line['tokens']] == [f'w{token} ' for token in ids]
        for name in ('weight', 'future_kl', 'raw_weight'):
            expected = getattr(stats, name)[row, positions].tolist()
            assert [token[name] for token in line['tokens']] == pytest.approx(expected, rel=1e-5, abs=1e-6)
        assert line['advantage'] == pytest.approx(data['advantages'][row].item())
        assert line['num_tokens'] == len(positions) and line['truncated'] is False
    assert len(lines[0]['tokens']) == 4 and any(token['weight'] != 1 for line in lines for token in line['tokens'])


def test_the_ms_swift_loss_hook_captures_the_calls_fipo_ran_in_and_no_other(tmp_path, log_tokens):
    """Through the plugin's wrapper of ``_compute_loss_and_metrics``: a loss call in which the FIPO adapter ran
    is captured with that call's own weights; a call of another loss type (no adapter call) is not."""
    from swift_fipo.integrations.ms_swift import hooks as ms_swift
    log_tokens(3)
    data = make_batch()
    log_ratio = 0.3 * torch.randn(data['completion_mask'].shape, generator=torch.Generator().manual_seed(7))

    def loss_call(trainer, model, model_inputs, grpo_batch, runs_fipo):
        if runs_fipo:  # as ms-swift's loss calls its _compute_fipo_influence
            weight, _ = ms_swift.fipo_influence_adapter(trainer, log_ratio, log_ratio.exp(), grpo_batch.advantages,
                                                        grpo_batch.completion_mask)
            return weight.sum(), {}
        return torch.tensor(0.0), {}

    hooked = ms_swift._with_extra_metrics(loss_call)
    batch = SimpleNamespace(completion_mask=data['completion_mask'], advantages=data['advantages'])
    trainer = make_trainer(tmp_path)
    hooked(trainer, torch.nn.Linear(1, 1), {'input_ids': data['input_ids']}, batch, runs_fipo=False)
    assert read_lines(tmp_path) == []
    hooked(trainer, torch.nn.Linear(1, 1), {'input_ids': data['input_ids']}, batch, runs_fipo=True)
    lines = read_lines(tmp_path)
    expected, _ = compute_fipo_influence(log_ratio, data['completion_mask'], data['advantages'], FIPOConfig())
    assert [line['index'] for line in lines] == [0, 1, 2]
    for row, line in enumerate(lines):
        positions = data['completion_mask'][row].nonzero().flatten().tolist()
        assert [token['weight'] for token in line['tokens']] == pytest.approx(expected[row, positions].tolist(),
                                                                             rel=1e-5, abs=1e-6)
    hooked(trainer, torch.nn.Linear(1, 1), {'input_ids': data['input_ids']}, batch, runs_fipo=False)
    assert read_lines(tmp_path) == lines and not interception_of(trainer).token_capture.disabled


def test_safety_flag_marks_exactly_the_tokens_the_rule_fired_on(tmp_path, log_tokens):
    log_tokens(3)
    data = make_batch(config=FIPOConfig(safety_threshold=1.0))  # row 1 (advantage < 0): ratio > 1 fires
    call_46(make_trainer(tmp_path), data)
    fired = {(row, column): not bool(data['stats'].safety_mask[row, column]) for row in range(3) for column in range(6)
             if data['completion_mask'][row, column]}
    assert any(fired.values()) and not all(fired.values())
    for row, line in enumerate(read_lines(tmp_path)):
        positions = data['completion_mask'][row].nonzero().flatten().tolist()
        assert [token.get('safety', False) for token in line['tokens']] == [fired[row, p] for p in positions]


def test_tokens_outside_the_loss_mask_are_listed_and_marked(tmp_path, log_tokens):
    """ms-swift may drop completion tokens from the loss (e.g. --top_entropy_quantile): the capture lists
    every completion token and marks those the loss (and FIPO) did not use."""
    log_tokens(1)
    data = make_batch()
    loss_mask = data['completion_mask'].clone()
    loss_mask[0, 1] = False
    log_ratio = torch.zeros(loss_mask.shape)
    _, stats = compute_fipo_influence(log_ratio, loss_mask, data['advantages'], FIPOConfig())
    call_46(make_trainer(tmp_path), dict(data, stats=stats))
    (line, ) = read_lines(tmp_path)
    assert len(line['tokens']) == 4  # the whole first completion
    assert [token.get('in_loss', True) for token in line['tokens']] == [True, False, True, True]


def test_output_directory_is_created_and_logging_steps_default_to_every_step(tmp_path, log_tokens):
    log_tokens(1)
    trainer = make_trainer(tmp_path / 'new' / 'run')  # ms-swift may not have created it yet
    del trainer.args.logging_steps  # an args object without it: every step is a logging step
    for step in (0, 1):
        trainer.state.global_step = step
        call_46(trainer, make_batch())
    assert [line['step'] for line in read_lines(tmp_path / 'new' / 'run')] == [1, 2]


def test_ms_swift_43_layout_and_per_token_advantages(tmp_path, log_tokens):
    log_tokens(1)
    data = make_batch()
    per_token = data['advantages'][:, None].expand(-1, 6).clone()
    inputs = {'input_ids': data['input_ids'], 'completion_mask': data['completion_mask'], 'advantages': per_token}
    token_capture.capture(make_trainer(tmp_path), data['stats'], (torch.nn.Linear(1, 1), inputs), {})
    (line, ) = read_lines(tmp_path)
    assert line['advantage'] == pytest.approx(1.5) and len(line['tokens']) == 4


def test_once_per_logging_step_across_loss_calls(tmp_path, log_tokens):
    log_tokens(4)
    trainer = make_trainer(tmp_path, logging_steps=2)
    call_46(trainer, make_batch())  # step 1: not a logging step
    assert read_lines(tmp_path) == []
    trainer.state.global_step = 1  # step 2: two gradient-accumulation calls fill N = 4, a third adds nothing
    for seed in range(3):
        call_46(trainer, make_batch(seed=seed))
    lines = read_lines(tmp_path)
    assert [(line['step'], line['index']) for line in lines] == [(2, 0), (2, 1), (2, 2), (2, 3)]
    trainer.state.global_step = 3
    call_46(trainer, make_batch())
    assert [line['step'] for line in read_lines(tmp_path)][-3:] == [4, 4, 4]


def test_fractional_logging_steps_follow_transformers(tmp_path, log_tokens):
    log_tokens(1)
    trainer = make_trainer(tmp_path, logging_steps=0.5, global_step=3)  # every ceil(10 * 0.5) = 5 steps
    call_46(trainer, make_batch())
    assert read_lines(tmp_path) == []
    trainer.state.global_step = 4
    call_46(trainer, make_batch())
    assert [line['step'] for line in read_lines(tmp_path)] == [5]


@pytest.mark.parametrize('change', [dict(main=False), dict(training=False)])
def test_only_rank_zero_and_only_training(tmp_path, log_tokens, change):
    log_tokens(2)
    call_46(make_trainer(tmp_path, **change), make_batch())
    assert read_lines(tmp_path) == []


def test_bounds_on_tokens_and_file_size(tmp_path, log_tokens, monkeypatch, capsys):
    log_tokens(3)
    monkeypatch.setattr(token_capture, 'MAX_TOKENS_PER_COMPLETION', 3)
    trainer = make_trainer(tmp_path)
    call_46(trainer, make_batch())
    lines = read_lines(tmp_path)
    assert [len(line['tokens']) for line in lines] == [3, 3, 3]
    assert [(line['num_tokens'], line['truncated']) for line in lines] == [(4, True), (6, True), (6, True)]

    size = (tmp_path / token_capture.FILE_NAME).stat().st_size
    monkeypatch.setattr(token_capture, 'MAX_FILE_BYTES', size + 10)
    for step in range(1, 4):
        trainer.state.global_step = step
        call_46(trainer, make_batch())
    assert (tmp_path / token_capture.FILE_NAME).stat().st_size == size  # the next step did not fit
    assert capsys.readouterr().err.count('reached its') == 1


def test_missing_ids_and_errors_warn_once_and_never_raise(tmp_path, log_tokens, capsys):
    log_tokens(2)
    data = make_batch()
    trainer = make_trainer(tmp_path)
    for _ in range(2):  # no input_ids anywhere: padding-free / unknown layout
        token_capture.capture(trainer, data['stats'], (None, {}, SimpleNamespace()), {})
    err = capsys.readouterr().err
    assert err.count('no completion token ids') == 1 and 'failed' not in err  # stopped cleanly, not by an error

    broken = make_trainer(tmp_path / 'broken')
    broken.processing_class = SimpleNamespace(decode=lambda ids: 1 / 0)
    call_46(broken, data)
    assert 'token capture failed' in capsys.readouterr().err
    assert read_lines(tmp_path) == [] and not (tmp_path / 'broken').exists()


class ByteTokenizer:
    """A byte-level tokenizer in miniature: id i is byte i, decoded as UTF-8 with U+FFFD for what does not decode."""

    def decode(self, ids: list[int]) -> str:
        return bytes(ids).decode('utf-8', errors='replace')


@pytest.mark.parametrize('text', ['3+4=7 #7', 'é 你好 #9', '\U0001f600 ok', 'a\nb'])
def test_token_texts_join_to_the_completion_where_characters_span_tokens(text):
    ids = list(text.encode())
    texts = token_capture.token_texts(ByteTokenizer(), ids)
    assert len(texts) == len(ids) and ''.join(texts) == text and '\ufffd' not in ''.join(texts)
    # A character of k bytes: k - 1 empty texts, then the character on the token that completes it.
    assert [piece for piece in texts if piece] == list(text)


def test_token_texts_keep_invalid_bytes_as_they_read():
    ids = [0xff, 0xfe, 0xfd, 0xfc, 0xfb, ord('x')]  # never valid UTF-8: not held back beyond a character's length
    texts = token_capture.token_texts(ByteTokenizer(), ids)
    assert ''.join(texts) == ByteTokenizer().decode(ids) == '\ufffd' * 5 + 'x'
    assert texts[3] and texts[-1].endswith('x')  # at most 3 tokens held back, as for a 4-byte character


# --- the real command line -------------------------------------------------------------------------


STOP = '<|im_end|>'  # the qwen template's stop token


def _readable(text: str) -> str:
    """A completion's characters without whitespace (ms-swift 3.x decodes the tiny tokenizer's completions with a
    space between tokens) and without U+FFFD: the random model emits invalid UTF-8, which a whole-text decode and a
    per-token one replace by different numbers of U+FFFD."""
    return ''.join(character for character in text if not character.isspace() and character != '\ufffd')


@pytest.mark.ms_swift
@pytest.mark.cli
def test_swift_rlhf_run_captures_tokens_then_plot_and_inspect(tiny_run_dir, tmp_path):
    need('swift', 'ms-swift')
    from test_cli_swift import _tail, run_tiny
    work = tmp_path / 'fipo'
    result, rows = run_tiny(tiny_run_dir, work, '--fipo_log_tokens', '2', '--log_completions', 'true')
    assert result.returncode == 0, _tail(result)
    (logging, ) = work.glob('output/*/logging.jsonl')
    captured = logging.parent / token_capture.FILE_NAME  # beside ms-swift's own files
    lines = [json.loads(line) for line in captured.read_text().splitlines()]
    assert [(line['step'], line['index']) for line in lines] == [(step, index) for step in (1, 2, 3, 4)
                                                                  for index in (0, 1)]
    # The tokens are the completions ms-swift itself logged for that step (the frame is not off by one).
    completions = set()
    for row in map(json.loads, (logging.parent / 'completions.jsonl').read_text().splitlines()):
        # ms-swift 4.6 logs the text without the stop token, 4.3 with it; the loss trains on it.
        completions.update((int(step), _readable(text).removesuffix(STOP))
                           for step, text in zip(row['step'], row['completion'], strict=False))
    for line in lines:
        assert line['tokens'] and all(isinstance(token['text'], str) for token in line['tokens'])
        text = _readable(''.join(token['text'] for token in line['tokens']))
        assert (line['step'], text.removesuffix(STOP)) in completions, line
        assert all(1 <= token['weight'] <= 1.2 for token in line['tokens'])  # the example's high-only clip
        assert math.isfinite(line['advantage'])
    by_step = {step: [line for line in lines if line['step'] == step] for step in (1, 2, 3, 4)}
    for first, reuse in ((1, 2), (3, 4)):  # the second pass trains on the same rollout ...
        assert ([[t['id'] for t in line['tokens']] for line in by_step[first]]
                == [[t['id'] for t in line['tokens']] for line in by_step[reuse]])
        assert all(t['weight'] == 1 and t['future_kl'] == 0 for line in by_step[first] for t in line['tokens'])
        # ... and only there do Future-KL and the weights move.
        assert any(t['future_kl'] != 0 for line in by_step[reuse] for t in line['tokens'])
    assert any(t['weight'] > 1 for step in (2, 4) for line in by_step[step] for t in line['tokens'])

    command = shutil.which('swift-fipo', path=str(Path(sys.executable).parent))
    plotted = subprocess.run([command, 'plot', str(work)], capture_output=True, text=True, check=False)
    assert plotted.returncode == 0, plotted.stderr
    assert (logging.parent / 'fipo_metrics.png').stat().st_size > 10_000
    inspected = subprocess.run([command, 'inspect', str(work / 'output')], capture_output=True, text=True,
                               check=False)
    assert inspected.returncode == 0, inspected.stderr
    page = (logging.parent / 'fipo_tokens.html').read_text()
    assert '<|im_end|>' not in page and '\\u003c|im_end|\\u003e' in page  # embedded, escaped
