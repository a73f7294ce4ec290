"""RNG capture for checkpoints: python ``random``, numpy's global RNG, torch CPU and CUDA, as tensors and plain
containers (so that a checkpoint holding them loads with ``torch.load(weights_only=True)``)."""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch


def rng_state() -> dict[str, Any]:
    """This process's RNG states: python ``random``, numpy's global RNG, torch CPU, and CUDA if available.

    Tensors and plain containers only, so it round-trips through
    ``torch.load(weights_only=True)``. In a multi-process run each rank
    should store its own.
    """
    version, mt, gauss_next = random.getstate()
    np_state = np.random.get_state(legacy=False)
    if np_state["bit_generator"] != "MT19937":  # pragma: no cover - numpy's global RNG is always MT19937
        raise TypeError(f"unsupported numpy bit generator {np_state['bit_generator']!r}")
    state: dict[str, Any] = {
        "python": {"version": version, "state": torch.tensor(mt, dtype=torch.int64), "gauss_next": gauss_next},
        "numpy": {
            "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what :func:`rng_state` captured.

    CUDA states are restored for the devices both the state and this process
    have; a missing ``"cuda"`` entry (checkpoint from a CPU run) leaves CUDA alone.
    """
    py = state["python"]
    random.setstate((int(py["version"]), tuple(int(x) for x in py["state"].tolist()), py["gauss_next"]))
    npst = state["numpy"]
    np.random.set_state(
        (
            "MT19937",
            npst["key"].cpu().numpy().astype(np.uint32),
            int(npst["pos"]),
            int(npst["has_gauss"]),
            float(npst["gauss"]),
        )
    )
    torch.set_rng_state(state["torch"].cpu())
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available():
        for device, dev_state in enumerate(cuda[: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(dev_state.cpu(), device)


__all__ = ["rng_state", "set_rng_state"]
