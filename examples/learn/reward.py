"""The task's verifier as a reward: for ms-swift (``--external_plugins examples/learn/reward.py --reward_funcs
mod10_answer``) and for TRL (``reward_funcs=[mod10_answer_reward]``).

1.0 when the completion ends with ``#`` and the right result (exactly one ``#``), else 0.0. The chain is not graded:
writing it only pays through a right answer, as in FIPO's paper (answer-only reward on math problems).
Needs the dataset column ``solution`` (written by task.py).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

# ms-swift imports this file by path; make task.py beside it importable.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from task import reward  # noqa: E402

REWARD_NAME = 'mod10_answer'


def _text(completion: Any) -> str:
    # TRL passes a conversational completion as a list of messages; ms-swift and TRL's plain format pass text.
    if isinstance(completion, list):
        return ''.join(message.get('content', '') for message in completion if isinstance(message, dict))
    return str(completion)


def mod10_answer_reward(completions: list[Any], solution: list[str], **kwargs: Any) -> list[float]:
    """One reward per completion; TRL calls it with ``prompts=...`` and the dataset columns as keywords."""
    if len(completions) != len(solution):
        raise ValueError(f'got {len(completions)} completions but {len(solution)} solutions')
    return [reward(_text(completion), answer) for completion, answer in zip(completions, solution, strict=False)]


# Registered only where ms-swift is already loaded (it imports this file from --external_plugins): importing ms-swift
# here would, among others, delete trl.GRPOTrainer.__init__ in a TRL process.
if 'swift' in sys.modules:
    try:
        from swift.rewards import ORM, orms  # ms-swift 4.x
    except ImportError:
        from swift.plugin import ORM, orms  # ms-swift 3.x

    class Mod10AnswerReward(ORM):

        def __call__(self, completions: list[str], solution: list[str], **kwargs: Any) -> list[float]:
            return mod10_answer_reward(completions, solution)

    orms[REWARD_NAME] = Mod10AnswerReward
