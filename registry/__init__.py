"""Generic typed registry (depends on pydantic and tyro; never on ``ntm``)."""

from .cli import ConfigError, Inline, did_you_mean, parse
from .core import ComponentConfig, Entry, Registry, RegistryError, Slot, registry_slots, slot_registry

__all__ = [
    "ComponentConfig", "ConfigError", "Entry", "Inline", "Registry", "RegistryError", "Slot", "did_you_mean", "parse",
    "registry_slots", "slot_registry",
]
