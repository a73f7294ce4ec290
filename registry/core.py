"""A generic typed registry binding names to (class, frozen pydantic config).

A variant registers once::

    TRANSPORTERS = Registry("transporter", base=Transporter)

    @TRANSPORTERS.register("tarflow", TarFlowConfig)
    class TarFlow(Transporter): ...

after which ``TRANSPORTERS.get("tarflow")`` returns the entry and
``TRANSPORTERS.field()`` is the annotation for a config *slot* that
(de)serialises to ``{"name": ..., **fields}``.

A slot is resolved against the registry *when a value is validated*, never
when the enclosing config class is defined: a variant registered later (a
user's plugin, imported after ``ntm``) is accepted by every config that
already declares the slot. The command line builds its view of the slots at
parse time (:mod:`registry.cli`) for the same reason.

This package depends on pydantic and tyro only; it never imports ``ntm``.
"""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any, Callable, ClassVar, Generic, TypeVar

import pydantic
from pydantic import BaseModel, ConfigDict

B = TypeVar("B")
C = TypeVar("C", bound="ComponentConfig")


class RegistryError(LookupError, ValueError):
    """Unknown or duplicate registry name; the message lists the known names."""

    def __str__(self) -> str:
        return str(self.args[0])


class ComponentConfig(BaseModel):
    """Base of every component config: frozen, unknown fields rejected, every float finite.

    ``allow_inf_nan=False`` holds for every float a config holds, however nested (``float | None``, tuples,
    mappings of floats): ``inf``, ``-inf`` and ``nan`` are a validation error naming the field ("Input should be a
    finite number"), from Python, a ``config.json`` or the command line (``--train.lr inf``) alike, so no
    non-finite setting ever reaches a component. Subclasses must not relax it (tests/faults check every config).

    Subclasses declare their fields (with docstrings: they are the ``--help``
    text) and implement :meth:`build`. ``registry_name`` is set when the
    config is bound to a registry.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True, allow_inf_nan=False)

    registry_name: ClassVar[str] = ""

    def build(self, *args: Any, **kwargs: Any) -> Any:
        """Instantiate the component this config describes."""
        raise NotImplementedError(f"{type(self).__name__} does not implement build()")

    def replace(self, **updates: Any) -> "ComponentConfig":
        """A validated copy with ``updates`` applied (unlike ``model_copy``, which does not validate).

        Values may be configs or plain data; nested registry slots accept
        either a config instance or ``{"name": ..., **fields}``. An unknown
        field name is a validation error naming it.
        """
        data = {name: getattr(self, name) for name in type(self).model_fields}
        return type(self).model_validate({**data, **updates})


@dataclasses.dataclass(frozen=True)
class Entry(Generic[C]):
    name: str
    cls: type
    config_cls: type[C]


class Registry(Generic[B]):
    """Name -> (component class, config class) for one kind of component."""

    def __init__(self, kind: str, base: type[B] | None = None) -> None:
        self.kind = kind
        self.base = base
        self._entries: dict[str, Entry] = {}

    # -- registration -----------------------------------------------------
    def register(self, name: str, config_cls: type[ComponentConfig]) -> Callable[[type], type]:
        """Class decorator binding ``name`` to the class and its config class."""
        if not (isinstance(config_cls, type) and issubclass(config_cls, ComponentConfig)):
            raise TypeError(f"{self.kind} {name!r}: config must subclass ComponentConfig, got {config_cls!r}")
        if not config_cls.model_config.get("frozen") or config_cls.model_config.get("extra") != "forbid":
            raise TypeError(f"{self.kind} {name!r}: {config_cls.__name__} must be frozen with extra='forbid'")
        if config_cls.model_config.get("allow_inf_nan", True) is not False:
            raise TypeError(f"{self.kind} {name!r}: {config_cls.__name__} must keep allow_inf_nan=False (settings are "
                            "finite)")

        def decorator(cls: type) -> type:
            if self.base is not None and not (isinstance(cls, type) and issubclass(cls, self.base)):
                raise TypeError(f"{self.kind} {name!r}: {cls!r} does not implement {self.base.__name__}")
            taken = self._entries.get(name)
            if taken is not None and not (_same_definition(taken.cls, cls) and _same_definition(taken.config_cls, config_cls)):
                raise RegistryError(
                    f"{self.kind} name {name!r} is taken by {_qualified(taken.cls)} ({_qualified(taken.config_cls)}); "
                    f"cannot register {_qualified(cls)} ({_qualified(config_cls)}) under it"
                )
            bound = config_cls.__dict__.get("registry_name", "")
            if bound and bound != name:
                raise RegistryError(f"{_qualified(config_cls)} is already registered as {bound!r}; one config class per name")
            # the same class again (or its re-definition by a re-imported module) replaces the entry: a no-op
            config_cls.registry_name = name
            self._entries[name] = Entry(name, cls, config_cls)
            return cls

        return decorator

    def unregister(self, name: str) -> None:
        """Remove a variant (tests and notebooks that clean up after themselves)."""
        entry = self.get(name)
        del self._entries[name]
        if entry.config_cls.__dict__.get("registry_name") == name:
            entry.config_cls.registry_name = ""

    # -- lookup -----------------------------------------------------------
    def names(self) -> list[str]:
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, name: str) -> Entry:
        try:
            return self._entries[name]
        except KeyError:
            raise RegistryError(
                f"unknown {self.kind} {name!r}; known {self.kind}s: {', '.join(self.names()) or '(none)'}"
            ) from None

    def entries(self) -> list[Entry]:
        return list(self._entries.values())

    def name_of(self, config: ComponentConfig) -> str:
        """The registered name of ``config``'s exact class (a subclass is a different variant)."""
        for entry in self._entries.values():
            if type(config) is entry.config_cls:
                return entry.name
        for entry in self._entries.values():  # an instance of a class its module has since re-defined
            if _same_definition(type(config), entry.config_cls):
                return entry.name
        raise RegistryError(
            f"{type(config).__name__} is not a registered {self.kind} config; known {self.kind}s: {', '.join(self.names())}"
        )

    def entry_of(self, config: ComponentConfig) -> Entry:
        return self._entries[self.name_of(config)]

    def build(self, config: ComponentConfig, *args: Any, **kwargs: Any) -> B:
        self.name_of(config)  # validates membership
        return config.build(*args, **kwargs)

    # -- (de)serialisation ------------------------------------------------
    def dump(self, config: ComponentConfig) -> dict[str, Any]:
        """``{"name": ..., **fields}``; nested registry slots dump recursively."""
        return {"name": self.name_of(config), **config.model_dump(mode="json")}

    def load(self, data: Any) -> ComponentConfig:
        """Inverse of :meth:`dump`; a config instance passes through unchanged."""
        if isinstance(data, ComponentConfig):
            entry = self.entry_of(data)
            if type(data) is not entry.config_cls:  # re-defined class: rebuild as the current one
                return entry.config_cls.model_validate(data.model_dump())
            return data
        if not isinstance(data, dict) or "name" not in data:
            raise ValueError(f"a {self.kind} config must be a mapping with a 'name' key, got {data!r}")
        fields = dict(data)
        entry = self.get(fields.pop("name"))
        return entry.config_cls.model_validate(fields)

    # -- typing helpers ---------------------------------------------------
    def field(self) -> Any:
        """Annotation for a config slot holding any variant of this registry.

        Validation and serialisation look the variant up when they run
        (``{"name": ...}`` through :meth:`load`, an instance through
        :meth:`dump`), so a config round-trips through JSON whatever variants
        it holds, including ones registered after the config class was defined.
        """
        return Annotated[
            ComponentConfig,
            Slot(self),
            pydantic.PlainValidator(self.load),
            pydantic.PlainSerializer(self.dump, return_type=dict),
        ]

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"


@dataclasses.dataclass(frozen=True)
class Slot:
    """Marks a config field as a slot of ``registry`` (see :meth:`Registry.field`)."""

    registry: Registry


def slot_registry(field: Any) -> Registry | None:
    """The registry of a pydantic ``FieldInfo`` declared with :meth:`Registry.field`, else ``None``."""
    return next((m.registry for m in field.metadata if isinstance(m, Slot)), None)


def registry_slots(model_cls: type[BaseModel], prefix: str = "") -> dict[str, Registry]:
    """Dotted paths of every registry-typed field under ``model_cls`` (recursing into all variants).

    E.g. ``{"model.transporter": TRANSPORTERS, "model.process.schedule": SCHEDULES, ...}``.
    """
    found: dict[str, Registry] = {}
    for name, field in model_cls.model_fields.items():
        path = f"{prefix}{name}"
        registry = slot_registry(field)
        if registry is not None:
            found[path] = registry
            for entry in registry.entries():
                found.update(registry_slots(entry.config_cls, prefix=f"{path}."))
        elif isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            found.update(registry_slots(field.annotation, prefix=f"{path}."))
    return found


def _qualified(obj: type) -> str:
    return f"{obj.__module__}.{obj.__qualname__}"


def _same_definition(a: type, b: type) -> bool:
    """The same class, or a re-definition of it (same module and qualified name: a module imported again)."""
    return a is b or _qualified(a) == _qualified(b)
