"""Pickle payloads for the fault suite: objects whose unpickling creates a marker file, one way each."""

from __future__ import annotations

import functools
import os
import pathlib


class Payload:
    """Unpickling it creates ``marker`` by ``how``: ``os.system``, ``Path.touch``, ``exec`` or ``open``."""

    def __init__(self, how: str, marker) -> None:
        self.how, self.marker = how, str(marker)

    def __reduce__(self):
        m = self.marker
        return {"os.system": (os.system, (f"touch {m}",)), "Path.touch": (pathlib.Path.touch, (pathlib.Path(m),)),
                "exec": (exec, (f"open({m!r}, 'w').close()",)), "open": (open, (m, "w"))}[self.how]


def payloads(*names: str) -> dict[str, functools.partial]:
    """``{name: marker -> Payload}`` for each way named."""
    return {name: functools.partial(Payload, name) for name in names}
