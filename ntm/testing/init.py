"""Meta-device initialisation (``train.meta_init``, :mod:`ntm.nn.init`) as a plain check.

A model built under ``torch.device("meta")``, given storage with ``to_empty`` and re-drawn with
:func:`ntm.nn.init.reset` after ``torch.manual_seed(seed)`` must hold exactly the weights an ordinary build
after ``torch.manual_seed(seed)`` holds: every parameter and buffer, bitwise. A component with parameters of
its own, or initial values set after its children were built, passes once it defines a ``reset_parameters()``
that replays its constructor (see :mod:`ntm.nn.init`).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ntm.nn.init import reset
from ntm.testing._util import check, seeded


def check_meta_init(build: Callable[[], nn.Module], subject: str = "model", *, seed: int = 0) -> None:
    """Meta build + ``to_empty`` + :func:`~ntm.nn.init.reset` == eager build, for the same ``seed``, bitwise.

    ``build`` is called twice, under ``torch.device("meta")`` and normally; it must read no data (a build on the
    meta device has none). Raises ``AssertionError`` naming the tensors that differ.
    """
    with seeded(seed):
        eager = build().state_dict()
    with torch.device("meta"):
        model = build()
    model.to_empty(device="cpu")
    with seeded(seed):
        reset(model)
    replayed = model.state_dict()
    check(sorted(replayed) == sorted(eager), subject,
          f"meta build has other tensors than the eager one: {sorted(set(replayed) ^ set(eager))[:6]}")
    differ = [name for name, t in eager.items() if not torch.equal(t, replayed[name])]
    check(not differ, subject, f"meta build + reset differs from the eager build (same seed) in {len(differ)} of "
                               f"{len(eager)} tensors, e.g. {', '.join(differ[:4])}: a module draws its initial "
                               "values otherwise than its reset_parameters() replays")


__all__ = ["check_meta_init"]
