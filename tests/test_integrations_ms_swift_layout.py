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
from packaging.version import Version

from swift_fipo.integrations.ms_swift import layout as ms_swift_layout
from swift_fipo.integrations.ms_swift.layout import LOGPS_METHOD, LOSS_METHOD, source_is_servable
from swift_fipo.integrations.sources import method_text
from swift_fipo.integrations.versions import installed_version

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
    return method_text(ms_swift_layout.trainer_source(megatron=False), LOSS_METHOD)


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


# Read from the installed version, not from the module under test (a broken reader must fail, not skip).
_INSTALLED = installed_version('ms-swift')
_LEGACY_INSTALLED = _INSTALLED is not None and Version('3.11') <= Version(_INSTALLED) < Version('4.2.2')


@only_where(_LEGACY_INSTALLED, 'the installed ms-swift has no legacy (3.11 - 4.2.1) GRPO loss')
def test_the_installed_legacy_loss_with_an_early_advantages_read_is_refused(tmp_path: Path):
    from swift_fipo.integrations.ms_swift import legacy as ms_swift_legacy  # imports torch: only where the test runs
    assert not ms_swift_layout.native_fipo_installed()
    method = _installed_loss()
    early = _with_early_read(method)
    assert source_is_servable(method) and not source_is_servable(early)
    # The same decision on an imported class, as the activation makes it.
    assert ms_swift_legacy.class_is_servable(_class_from(method, tmp_path, 'as_installed'))
    assert not ms_swift_legacy.class_is_servable(_class_from(early, tmp_path, 'early_read'))


def _trainer_files(root: Path, swift_prepare: str, trl_step: str) -> tuple[Path, Path]:
    swift, trl = root / 'swift', root / 'trl'
    (swift / 'rlhf_trainers').mkdir(parents=True)
    (trl / 'trainer').mkdir(parents=True)
    (swift / 'rlhf_trainers' / 'grpo_trainer.py').write_text(
        f'class GRPOTrainer:\n\n    def _prepare_inputs(self, inputs):\n        {swift_prepare}\n\n'
        '    def log(self):\n        self._step += 1\n')
    (trl / 'trainer' / 'grpo_trainer.py').write_text(
        f'class GRPOTrainer:\n\n    def training_step(self, model, inputs):\n        {trl_step}\n')
    return swift, trl


@pytest.mark.parametrize('swift_prepare, trl_step, broken', [
    ('self._step += 1', 'self._step += 1', True),  # ms-swift 4.0 / 4.1 with TRL >= 0.26
    ('return inputs', 'self._step += 1', False),  # ms-swift 3.x / 4.2 (the step advanced elsewhere, in log)
    ('self._step += 1', 'return None', False),  # an older TRL
])
def test_rollout_reuse_is_broken_only_where_both_advance_the_step(tmp_path: Path, swift_prepare: str, trl_step: str,
                                                                   broken: bool):
    swift, trl = _trainer_files(tmp_path, swift_prepare, trl_step)
    reason = ms_swift_layout.rollout_reuse_broken(swift_root=swift, trl_root=trl)
    assert (reason is not None) == broken, reason
    if broken:
        assert 'FIPO would be DAPO' in reason


def _fake_swift(root: Path, files: dict[str, str]) -> Path:
    swift = root / 'swift'
    for relative, text in files.items():
        (swift / relative).parent.mkdir(parents=True, exist_ok=True)
        (swift / relative).write_text(text)
    return swift


@pytest.mark.parametrize('present, expected', [
    (('pipelines/base.py', 'llm/base.py'), 'swift.pipelines.base'),  # the 4.x file wins where both exist
    (('pipelines/base.py', ), 'swift.pipelines.base'),
    (('llm/base.py', ), 'swift.llm.base'),  # 3.x
    ((), 'swift.pipelines.base'),
])
def test_module_path_prefers_the_4x_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, present: tuple,
                                           expected: str):
    swift = _fake_swift(tmp_path, {relative: '' for relative in present})
    monkeypatch.setattr(ms_swift_layout, '_package_root', lambda name: swift if name == 'swift' else None)
    assert ms_swift_layout.module_path('swift.pipelines.base') == expected


@pytest.mark.parametrize('hf, megatron, native', [(True, False, True), (False, True, False), (False, False, False)])
def test_native_fipo_is_read_from_the_hf_trainer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hf: bool,
                                                 megatron: bool, native: bool):
    def trainer(has: bool) -> str:
        method = '    def _compute_fipo_influence(self):\n        pass\n'
        return 'class GRPOTrainer:\n' + (method if has else '    pass\n')

    swift = _fake_swift(tmp_path, {'rlhf_trainers/grpo_trainer.py': trainer(hf),
                                   'megatron/trainers/grpo_trainer.py': trainer(megatron)})
    monkeypatch.setattr(ms_swift_layout, '_package_root', lambda name: swift if name == 'swift' else None)
    assert ms_swift_layout.native_fipo_installed() is native
