"""Conditioners: a batch's labels or captions -> the model's condition input; encoded conditions.

Each variant registers in ``CONDITIONERS``; :class:`Condition` is what a
condition encoder (owned by the model) makes of token ids.
"""

from ntm.conditioning.base import (
    CONDITIONERS,
    NULL_TOKEN,
    ConditionEncoder,
    Conditioner,
    ConditionerConfig,
    FunctionConditioner,
    as_conditioner,
    heldout_condition,
)
from ntm.conditioning.condition import Cond, Condition, condition_batch, condition_cat, encode_condition
from ntm.conditioning.labels import ClassLabelConditioner, ClassLabelConfig, NoConditionConfig, NoConditioner
from ntm.conditioning.open_clip_text import OpenClipTextConditioner, OpenClipTextConfig, OpenClipTextEncoder
from ntm.conditioning.text import SmallTextConditioner, SmallTextConfig, SmallTextEncoder

__all__ = [
    "CONDITIONERS", "NULL_TOKEN", "ClassLabelConditioner", "ClassLabelConfig", "Cond", "Condition",
    "ConditionEncoder", "Conditioner", "ConditionerConfig", "FunctionConditioner", "NoConditionConfig", "NoConditioner",
    "OpenClipTextConditioner", "OpenClipTextConfig", "OpenClipTextEncoder", "SmallTextConditioner",
    "SmallTextConfig", "SmallTextEncoder", "as_conditioner", "condition_batch", "condition_cat", "encode_condition",
    "heldout_condition",
]
