"""ntm: Normalizing Trajectory Models.

The public front door for notebooks and scripts (docs/api.md)::

    import ntm
    m = ntm.load("runs/digits-ntm")     # a run directory or an export file
    images = m.sample(16)               # images in [0, 1]
    nll = m.nll(images)                 # NLL per example (nats)

``load``, ``Model``, ``ArgumentError`` and ``ExportError`` come from :mod:`ntm.experiments.api`, imported on first
use (``import ntm`` itself imports nothing else). Nothing inside the package imports them from here: the facade
ranks above every layer (tests/test_layers.py).
"""

__version__ = "0.1.0"

_LAZY = ("ArgumentError", "ExportError", "Model", "load")
"""Names of :mod:`ntm.experiments.api` offered here, imported on first access."""

__all__ = ["ArgumentError", "ExportError", "Model", "__version__", "load"]


def __getattr__(name: str):
    if name in _LAZY:
        from ntm.experiments import api

        value = getattr(api, name)
        globals()[name] = value  # later lookups skip __getattr__
        return value
    raise AttributeError(f"module 'ntm' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
