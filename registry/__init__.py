"""Generic typed registry (depends on pydantic and tyro; never on ``ntm``)."""

from registry.core import ComponentConfig, Entry, Registry, RegistryError, deferred_validation, registry_slots

__all__ = ["ComponentConfig", "Entry", "Registry", "RegistryError", "deferred_validation", "registry_slots"]
