"""ms_swift_layout's capability check of a legacy (3.11 - 4.2.1) GRPO loss: the legacy hook reweights the
advantages when the current log-probs arrive, so a loss that reads ``inputs['advantages']`` before calling
``_get_per_token_logps_and_entropies`` would train on plain advantages: it must not be served.

Checked on synthetic loss text everywhere, and on the installed ms-swift's own loss where that is a legacy one
(its text, and a class built from it, with one line moved)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from conftest import only_where
from swift_fipo.integrations import ms_swift_layout
from swift_fipo.integrations.ms_swift_layout import LOGPS_METHOD, LOSS_METHOD, source_is_servable

pytestmark = pytest.mark.ms_swift

_EARLY_READ = "        early = inputs['advantages']\n"


def _loss_source(advantages_first: bool, read_advantages: bool = True) -> str:
    logps = f'        per_token_logps, entropies = self.{LOGPS_METHOD}(model, inputs)\n'
    advantages = "        advantages = inputs['advantages']\n" if read_advantages else '        advantages = 1\n'
    body = advantages + logps if advantages_first else logps + advantages
    return (f'class GRPOTrainer:\n\n    def {LOSS_METHOD}(self, model, inputs):\n{body}'
            "        if self.loss_type in ['grpo', 'dapo']:\n"
            '            per_token_loss1 = per_token_logps.exp() * advantages.unsqueeze(1)\n'
            '        return per_token_loss1\n\n'
            f'    def {LOGPS_METHOD}(self, model, inputs):\n        return None, None\n')


def test_a_loss_reading_the_advantages_before_the_log_probs_is_refused():
    assert source_is_servable(_loss_source(advantages_first=False))
    assert not source_is_servable(_loss_source(advantages_first=True))
    assert not source_is_servable(_loss_source(advantages_first=False, read_advantages=False))


def _installed_loss() -> str:
    return ms_swift_layout._method_source(ms_swift_layout.trainer_source(megatron=False), LOSS_METHOD)


def _with_early_read(method: str) -> str:
    """The method with ``inputs['advantages']`` read on its first line, before the log-probs."""
    signature_end = method.index('):\n') + len('):\n')
    return method[:signature_end] + _EARLY_READ + method[signature_end:]


def _class_from(method: str, tmp_path: Path, name: str) -> type:
    path = tmp_path / f'{name}.py'
    path.write_text(f'class GRPOTrainer:\n\n    {method.rstrip()}\n\n'
                    f'    def {LOGPS_METHOD}(self, model, inputs):\n        return None, None\n')
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.GRPOTrainer


_LEGACY_INSTALLED = (not ms_swift_layout.native_fipo_installed()
                     and source_is_servable(ms_swift_layout.trainer_source(megatron=False)))


@only_where(_LEGACY_INSTALLED, 'the installed ms-swift has no legacy (3.11 - 4.2.1) GRPO loss')
def test_the_installed_legacy_loss_with_an_early_advantages_read_is_refused(tmp_path: Path):
    from swift_fipo.integrations import ms_swift_legacy  # imports torch: only where the test runs
    method = _installed_loss()
    early = _with_early_read(method)
    assert source_is_servable(method) and not source_is_servable(early)
    # The same decision on an imported class, as the activation makes it.
    assert ms_swift_legacy.class_is_servable(_class_from(method, tmp_path, 'as_installed'))
    assert not ms_swift_legacy.class_is_servable(_class_from(early, tmp_path, 'early_read'))
