"""Where things are in ms-swift: the one record of its module paths, method names and source markers,
and the look-ups that read the installed ms-swift without importing its trainers.

Imported at every interpreter start (the table of hosts reads ``WATCHED`` from here), so its module level
imports nothing; the look-ups import what they need when called. ms-swift 3.x and 4.x keep the pipeline and
the HF GRPO trainer in different modules; whether FIPO can be served is decided from the trainer's source
text (importing ``swift.megatron`` has side effects, and the 4.1 / 4.2 trainers import vLLM).
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from pathlib import Path

NAME = 'ms-swift'
DISTRIBUTION = 'ms-swift'

# What a training run imports, in that order: argument parsing (both command lines), then the trainer.
PIPELINE_MODULE = 'swift.pipelines.base'
HF_TRAINER_MODULE = 'swift.rlhf_trainers.grpo_trainer'
MEGATRON_TRAINER_MODULE = 'swift.megatron.trainers.grpo_trainer'
# ms-swift 4.x module -> where ms-swift 3.x keeps the same thing.
MODULES_3X = {
    PIPELINE_MODULE: 'swift.llm.base',
    HF_TRAINER_MODULE: 'swift.trainers.rlhf_trainer.grpo_trainer',
}
_PATCHER = 'swift_fipo.integrations.ms_swift.hooks:patch_module'
# Host module -> the function that patches it right after ms-swift first imports it.
WATCHED = {module: _PATCHER for module in (PIPELINE_MODULE, HF_TRAINER_MODULE, MEGATRON_TRAINER_MODULE,
                                           *MODULES_3X.values())}

# Classes and methods the hooks patch or read.
PIPELINE_CLASS = 'SwiftPipeline'
PARSE_METHOD = '_parse_args'
COMPAT_METHOD = '_compat_dsw_gradio'  # runs right after parsing, in both routes
TRAINER_CLASS_SUFFIX = 'GRPOTrainer'
HF_TRAINER_CLASS = 'GRPOTrainer'
MEGATRON_TRAINER_CLASS = 'MegatronGRPOTrainer'
# ms-swift >= 4.2.2: the native FIPO hook of both GRPO trainers, which the adapter replaces.
FIPO_HOOK = '_compute_fipo_influence'
HF_METRICS_METHOD = '_compute_loss_and_metrics'
MEGATRON_LOSS_METHOD = 'loss_func'
MEGATRON_REDUCE_METHOD = '_all_reduce_metric'
AGGREGATE_METHOD = '_aggregate_and_update_metrics'
TEACHER_METHOD = '_setup_teacher'
# What _setup_teacher sets (ms-swift >= 4.4): whether a teacher was configured (a method on the HF mixin, a
# plain attribute on the Megatron one), and the flags of the implicit "dynamic self-distillation" teacher.
TEACHER_EXPLICIT_ATTRIBUTE = '_has_teacher_explicit'
TEACHER_ATTRIBUTE = '_has_teacher'
SELF_DISTILLATION_ATTRIBUTE = '_is_dynamic_self_distillation'
# FIPOConfig field -> its ms-swift flag (without the dashes). ms-swift's native flags keep their names
# (``--fipo_decay_rate``, ``--delta``); the fields ms-swift lacks get plugin flags in the same style.
FLAG_NAMES = {
    'decay_rate': 'fipo_decay_rate',
    'clip_range': 'fipo_clip_range',
    'clip_high_only': 'fipo_clip_high_only',
    'safety_threshold': 'fipo_safety_threshold',
    'delta': 'delta',
    'filter_threshold': 'fipo_filter_threshold',
    'log_ratio_clamp': 'fipo_log_ratio_clamp',
    'sequence_drop': 'fipo_sequence_drop',
    'unclipped_weight_cap': 'fipo_weight_cap',
}
# ms-swift 3.11 - 4.2.1 (the legacy hook): the loss, and the log-prob method it calls first.
LOSS_METHOD = '_compute_loss_and_metrics'
LOGPS_METHOD = '_get_per_token_logps_and_entropies'
# Source markers of that loss (``source_is_servable``): it reads the advantages after the log-probs, builds
# the clipped surrogate from advantages.unsqueeze(1) and has the DAPO normalisation branch.
LEGACY_ADVANTAGES_READ = "inputs['advantages']"
LEGACY_LOSS_MARKERS = ('advantages.unsqueeze(1)', "'dapo']", 'per_token_loss1')
# The loss branch a legacy FIPO run takes: native FIPO shares DAPO's normalisation and KL handling.
DAPO_LOSS_TYPE = 'dapo'
# The batch keys and trainer attributes the legacy hook reads beside the advantages.
COMPLETION_MASK_KEY = 'completion_mask'
TRUNCATED_MASK_KEY = 'truncated_mask'
OVERLONG_FILTER_ATTRIBUTE = 'overlong_filter'  # --overlong_filter: truncated completions leave the loss
IMPORTANCE_SAMPLING_ATTRIBUTE = 'importance_sampling_level'
# The importance-sampling levels at which ms-swift's loss clips one ratio per response (coef_1 is [B, 1]).
SEQUENCE_LEVELS = ('sequence', 'sequence_token')


def _package_root(name: str) -> Path | None:
    """An installed top-level package's directory (``swift``, ``trl``), found without importing it."""
    import importlib.util
    from pathlib import Path
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    return Path(spec.origin).parent if spec is not None and spec.origin else None


def module_path(name: str) -> str:
    """``name`` if this ms-swift has that file, else its 3.x location (when there is one). Looked up on
    disk: importing ``swift`` to ask can fail, and doctor must then still name the module."""
    root = _package_root('swift')
    if name not in MODULES_3X or root is None:
        return name

    def exists(module: str) -> bool:
        path = root.joinpath(*module.split('.')[1:])
        return path.with_suffix('.py').is_file() or (path / '__init__.py').is_file()

    return MODULES_3X[name] if not exists(name) and exists(MODULES_3X[name]) else name


# GRPO trainer source files (relative to the swift package): 4.x, then 3.x for the HF trainer.
_TRAINER_FILES = {False: (('rlhf_trainers', 'grpo_trainer.py'), ('trainers', 'rlhf_trainer', 'grpo_trainer.py')),
                  True: (('megatron', 'trainers', 'grpo_trainer.py'),)}


def trainer_source(megatron: bool, swift_root: Path | None = None) -> str:
    """The installed GRPO trainer module's source, read without importing it ('' if absent):
    importing ``swift.megatron`` has side effects, and 4.1/4.2 trainers import vLLM."""
    from pathlib import Path
    swift_root = swift_root or _package_root('swift') or Path('/nonexistent')
    for parts in _TRAINER_FILES[megatron]:
        try:
            return swift_root.joinpath(*parts).read_text()
        except OSError:
            continue
    return ''


def native_fipo_installed() -> bool:
    """True if the installed ms-swift's HF GRPO trainer has native FIPO (>= 4.2.2)."""
    return f'def {FIPO_HOOK}(' in trainer_source(megatron=False)


def source_is_servable(source: str) -> bool:
    """True if a GRPO trainer module's source (read, not imported) has what the legacy hook needs:
    a ``_compute_loss_and_metrics`` that reads the advantages after the current log-probs, a clipped
    surrogate built from ``advantages.unsqueeze(1)`` and a DAPO normalisation branch."""
    from swift_fipo.integrations.sources import method_text, missing_markers, reads_in_order
    body = method_text(source, LOSS_METHOD)
    return reads_in_order(body, f'self.{LOGPS_METHOD}(', LEGACY_ADVANTAGES_READ) and not missing_markers(
        body, LEGACY_LOSS_MARKERS)


_STEP_ADVANCE = 'self._step += 1'


def rollout_reuse_broken(swift_root: Path | None = None, trl_root: Path | None = None) -> str | None:
    """Why the installed ms-swift + TRL never reuse a rollout, or None.

    ms-swift 4.0 and 4.1 advance the trainer's step counter in their own ``_prepare_inputs``; TRL
    >= 0.26 advances it again in ``GRPOTrainer.training_step``. The counter then moves by 2 per step,
    so a new rollout is generated at every step and none is trained on twice: every run is on-policy
    and FIPO (which only acts off-policy) would be DAPO.
    """
    from pathlib import Path
    trl_root = trl_root or _package_root('trl') or Path('/nonexistent')
    try:
        trl_source = (trl_root / 'trainer' / 'grpo_trainer.py').read_text()
    except OSError:
        return None
    from swift_fipo.integrations.sources import method_text
    swift_advances = _STEP_ADVANCE in method_text(trainer_source(False, swift_root), '_prepare_inputs')
    trl_advances = _STEP_ADVANCE in method_text(trl_source, 'training_step')
    if not (swift_advances and trl_advances):
        return None
    return ("both ms-swift's GRPOTrainer._prepare_inputs and TRL's GRPOTrainer.training_step advance the step "
            'counter, so every step generates a new rollout and none is reused (--num_iterations and '
            '--steps_per_generation have no effect): FIPO would be DAPO')


def doctor_line(class_name: str, hooked: bool) -> str | None:
    """What ``swift-fipo doctor`` says about a hooked GRPO trainer class of an ms-swift without native
    FIPO (3.11 - 4.2.1); None where the ordinary wording applies."""
    if native_fipo_installed() or not hooked or not class_name.endswith('GRPOTrainer'):
        return None
    broken = rollout_reuse_broken()
    if broken:
        return f'hooked, but --loss_type fipo is refused with this TRL: {broken}'
    return 'hooked (FIPO as the DAPO loss with reweighted advantages: this ms-swift predates native FIPO, 4.2.2)'
