"""Opt-in per-token capture (``--fipo_log_tokens N``): what FIPO did to each token of a few completions.

The HF trainer hook calls ``capture`` once per loss call. With N = 0 (the default) it returns at once.
Otherwise, on rank 0 and on steps where ms-swift logs, the first N completions of the step are written
to ``<output_dir>/fipo_tokens.jsonl`` (beside ms-swift's ``logging.jsonl`` and ``completions.jsonl``),
one JSON line each::

    {"step": 2, "index": 0, "advantage": 0.87, "num_tokens": 31, "truncated": false,
     "tokens": [{"id": 17, "text": "3", "future_kl": -0.12, "weight": 1.0, "raw_weight": 0.887}, ...]}

A token the loss ignores (e.g. ``--overlong_filter``) has ``"in_loss": false``; one the safety rule
clamped has ``"safety": true``. Bounds: at most ``MAX_TOKENS_PER_COMPLETION`` tokens per line (then
``"truncated": true``) and ``MAX_FILE_BYTES`` per file (then capture stops with a warning), so a long
run cannot fill the disk. The capture never fails a training run: an error disables it with a warning.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from swift_fipo.integrations.interception import interception_of
from swift_fipo.integrations.messages import report
from swift_fipo.integrations.settings import settings_of

FILE_NAME = 'fipo_tokens.jsonl'
MAX_TOKENS_PER_COMPLETION = 2048
MAX_FILE_BYTES = 64 * 2**20
# Significant digits kept per value: enough to read, and it keeps lines short.
_DIGITS = 6
# A character is at most this many UTF-8 bytes: a longer run of undecodable tokens is invalid bytes, kept as they read.
_UTF8_MAX_BYTES = 4


@dataclass
class _CaptureState:
    step: int = -1
    taken: int = 0
    """Completions written for ``step`` so far (a step may span several loss calls)."""
    bytes_written: int | None = None
    disabled: bool = False


def capture(trainer: Any, stats: Any, call_args: Sequence[Any], call_kwargs: Mapping[str, Any]) -> None:
    """Write per-token FIPO values of up to N completions of this loss call (``--fipo_log_tokens N``,
    in the run settings attached to ``trainer.args``).

    ``stats`` is the call's ``FIPOStats``; ``call_args`` / ``call_kwargs`` are the arguments of
    ``_compute_loss_and_metrics`` (searched for the completion token ids and advantages).
    """
    settings = settings_of(getattr(trainer, 'args', None))
    wanted = settings.capture_completions if settings is not None else 0
    if wanted <= 0:  # the default: no cost beyond this lookup
        return
    trainer_state = interception_of(trainer)
    if trainer_state.token_capture is None:
        trainer_state.token_capture = _CaptureState()
    state: _CaptureState = trainer_state.token_capture
    if state.disabled:
        return
    try:
        _capture(trainer, state, wanted, stats, call_args, call_kwargs)
    except Exception as error:  # diagnostics must never stop a training run
        state.disabled = True
        report(f'token capture failed and is off for this run: {type(error).__name__}: {error}')


def _capture(trainer: Any, state: _CaptureState, wanted: int, stats: Any, call_args: Sequence[Any],
             call_kwargs: Mapping[str, Any]) -> None:
    model = getattr(trainer, 'model', None)
    if model is not None and not model.training:  # evaluation loss calls are not training steps
        return
    accelerator = getattr(trainer, 'accelerator', None)
    if accelerator is not None and not accelerator.is_main_process:
        return
    # global_step counts finished optimizer steps: the step being computed is the next one, and
    # ms-swift logs it under that number.
    step = int(trainer.state.global_step) + 1
    if step % _logging_interval(trainer) != 0:
        return
    if state.step != step:
        state.step, state.taken = step, 0
    if state.taken >= wanted:
        return

    weight = stats.weight
    batch, length = weight.shape
    token_ids = _completion_ids(call_args, call_kwargs, batch, length)
    if token_ids is None:
        state.disabled = True
        report('token capture is off: no completion token ids found among the loss inputs '
              '(padding-free batches or an unknown ms-swift layout).')
        return
    mask = _find_tensor(call_args, call_kwargs, 'completion_mask')
    if mask is None or tuple(mask.shape) != (batch, length):
        mask = stats.completion_mask
    advantages = _find_tensor(call_args, call_kwargs, 'advantages')

    rows = list(range(min(batch, wanted - state.taken)))
    tokenizer = _tokenizer(trainer)
    # One device -> host copy of just the rows written.
    mask = mask[:len(rows)].detach().to('cpu', torch.bool)
    values = {
        'future_kl': stats.future_kl[:len(rows)].detach().float().cpu(),
        'weight': weight[:len(rows)].detach().float().cpu(),
        'raw_weight': stats.raw_weight[:len(rows)].detach().float().cpu(),
    }
    in_loss = stats.completion_mask[:len(rows)].detach().cpu()
    safety = stats.safety_mask[:len(rows)].detach().cpu()
    ids = token_ids[:len(rows)].detach().cpu()

    lines = []
    for row in rows:
        positions = mask[row].nonzero().flatten()
        kept = positions[:MAX_TOKENS_PER_COMPLETION]
        row_ids = ids[row, kept].tolist()
        texts = token_texts(tokenizer, row_ids) if tokenizer is not None else [''] * len(row_ids)
        row_values = {name: tensor[row, kept].tolist() for name, tensor in values.items()}
        row_in_loss, row_safe = in_loss[row, kept].tolist(), safety[row, kept].tolist()
        tokens = []
        for column, (token, text) in enumerate(zip(row_ids, texts, strict=True)):
            entry = {'id': int(token), 'text': text}
            entry.update({name: _round(numbers[column]) for name, numbers in row_values.items()})
            if not row_in_loss[column]:
                entry['in_loss'] = False
            if not row_safe[column]:
                entry['safety'] = True
            tokens.append(entry)
        lines.append(json.dumps({
            'step': step,
            'index': state.taken + row,
            'advantage': _advantage(advantages, row, mask[row], batch, length),
            'num_tokens': positions.numel(),
            'truncated': positions.numel() > kept.numel(),
            'tokens': tokens,
        }, ensure_ascii=False, allow_nan=False))
    _append(trainer, state, lines)
    state.taken += len(rows)


def token_texts(tokenizer: Any, ids: Sequence[int]) -> list[str]:
    """Each token's text, such that the texts joined read as the completion.

    A byte-level tokenizer (Qwen2's, for one) splits a character of several UTF-8 bytes over several tokens, and a
    token decoded alone then reads as U+FFFD. Such a token gets the text '' and the token that completes the
    character gets the whole character.
    """
    texts: list[str] = []
    start = 0  # the first token of the character being completed
    for end in range(1, len(ids) + 1):
        piece = tokenizer.decode(list(ids[start:end]))
        if piece.endswith('\ufffd') and end - start < _UTF8_MAX_BYTES:
            texts.append('')
            continue
        texts.append(piece)
        start = end
    return texts


def _append(trainer: Any, state: _CaptureState, lines: list[str]) -> None:
    path = os.path.join(trainer.args.output_dir, FILE_NAME)
    if state.bytes_written is None:  # a resumed run appends to what is there
        state.bytes_written = os.path.getsize(path) if os.path.exists(path) else 0
    payload = ''.join(line + '\n' for line in lines).encode('utf-8')
    if state.bytes_written + len(payload) > MAX_FILE_BYTES:
        state.disabled = True
        report(f'token capture stopped: {path} reached its {MAX_FILE_BYTES // 2**20} MiB cap.')
        return
    os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
    with open(path, 'ab') as handle:
        handle.write(payload)
    state.bytes_written += len(payload)


def _logging_interval(trainer: Any) -> int:
    interval = getattr(trainer.args, 'logging_steps', 1) or 1
    if 0 < interval < 1:  # transformers reads a fraction as a share of max_steps
        interval = math.ceil(trainer.state.max_steps * interval)
    return max(1, int(interval))


def _candidates(call_args: Sequence[Any], call_kwargs: Mapping[str, Any]) -> list[Any]:
    # ms-swift 4.6 passes (model, model_inputs: dict, grpo_batch: GRPOBatch); 4.3 (model, inputs: dict).
    return [value for value in (*call_args, *call_kwargs.values()) if not isinstance(value, torch.nn.Module)]


def _find_tensor(call_args: Sequence[Any], call_kwargs: Mapping[str, Any], name: str) -> torch.Tensor | None:
    for value in _candidates(call_args, call_kwargs):
        found = value.get(name) if isinstance(value, Mapping) else getattr(value, name, None)
        if isinstance(found, torch.Tensor):
            return found
    return None


def _completion_ids(call_args: Sequence[Any], call_kwargs: Mapping[str, Any], batch: int,
                    length: int) -> torch.Tensor | None:
    """``[B, T]`` token ids aligned with the loss's completion frame, found by what the inputs hold.

    TRL-style inputs carry ``completion_ids`` directly; ms-swift's HF trainers keep the whole sequence
    in ``input_ids``, whose last T columns are the tokens the per-token log-probs score.
    """
    for name in ('completion_ids', 'input_ids'):
        ids = _find_tensor(call_args, call_kwargs, name)
        if (ids is not None and ids.dim() == 2 and ids.shape[0] == batch and ids.shape[1] >= length
                and not ids.is_floating_point()):
            return ids[:, ids.shape[1] - length:]
    return None


def _advantage(advantages: torch.Tensor | None, row: int, mask: torch.Tensor, batch: int,
               length: int) -> float | None:
    if advantages is None or advantages.shape[0] != batch:
        return None
    values = advantages[row].detach().float().cpu().reshape(-1)
    if values.numel() == length and mask.any():  # per-token advantages: their mean over the completion
        values = values[mask]
    value = float(values.mean())
    return _round(value) if math.isfinite(value) else None


def _tokenizer(trainer: Any) -> Any:
    for candidate in (getattr(trainer, 'processing_class', None),
                      getattr(getattr(trainer, 'template', None), 'tokenizer', None)):
        candidate = getattr(candidate, 'tokenizer', candidate)  # a multimodal processor wraps one
        if candidate is not None and hasattr(candidate, 'decode'):
            return candidate
    return None


def _round(value: float) -> float | None:
    # JSON has no inf/NaN; weights are finite by construction, but a Future-KL may not be.
    return float(f'{value:.{_DIGITS}g}') if math.isfinite(value) else None
