"""Toy reward for the tiny-model runs, loaded with ``--external_plugins examples/tiny/reward.py``.

A random model cannot add, so the reward is shaped to vary between completions of one prompt (that is
all GRPO needs to produce non-zero advantages): 1 for the right sum anywhere in the text, plus a small
bonus per digit.
"""

from __future__ import annotations

import re
from typing import Any

try:
    from swift.rewards import ORM, orms  # ms-swift 4.x
except ImportError:
    from swift.plugin import ORM, orms  # ms-swift 3.x


class TinySumReward(ORM):

    def __call__(self, completions: list[str], solution: list[str], **kwargs: Any) -> list[float]:
        rewards = []
        for completion, answer in zip(completions, solution, strict=False):
            digits = len(re.findall(r'\d', completion))
            rewards.append(float(answer in completion) + 0.1 * min(digits, 5))
        return rewards


orms['tiny_sum'] = TinySumReward
