"""A generic typed registry binding names to (class, frozen pydantic config).

A variant registers once::

    TRANSPORTERS = Registry("transporter", base=Transporter)

    @TRANSPORTERS.register("tarflow", TarFlowConfig)
    class TarFlow(Transporter): ...

after which ``TRANSPORTERS.get("tarflow")`` returns the entry,
``TRANSPORTERS.config_union()`` is a tyro-ready ``Union`` whose members are
named subcommands, and ``TRANSPORTERS.field()`` is the annotation for a
config slot that (de)serialises to ``{"name": ..., **fields}``.

This package depends on pydantic and tyro only; it never imports ``ntm``.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
from typing import Annotated, Any, Callable, ClassVar, Generic, TypeVar, Union

import pydantic
import tyro
from pydantic import BaseModel, ConfigDict

B = TypeVar("B")
C = TypeVar("C", bound="ComponentConfig")


class RegistryError(LookupError, ValueError):
    """Unknown or duplicate registry name; the message lists the known names."""

    def __str__(self) -> str:
        return str(self.args[0])


_DEFERRED = contextvars.ContextVar("ntm_registry_deferred_validation", default=False)


@contextlib.contextmanager
def deferred_validation():
    """Inside this block, configs are built without validation (``model_construct``).

    A command-line parser builds a whole config tree here, then validates it
    once with ``model_validate`` *after* the block, so every bad field is
    reported together, one line each, with its full dotted path. Only
    construction belongs inside the block: validating or loading configs
    inside it is not supported.
    """
    token = _DEFERRED.set(True)
    try:
        yield
    finally:
        _DEFERRED.reset(token)


class ComponentConfig(BaseModel):
    """Base of every component config: frozen, unknown fields rejected.

    Subclasses declare their fields (with docstrings: they are the ``--help``
    text) and implement :meth:`build`. ``registry_name`` is set when the
    config is bound to a registry.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    registry_name: ClassVar[str] = ""

    def __init__(self, /, **data: Any) -> None:
        if not _DEFERRED.get():
            super().__init__(**data)
            return
        built = type(self).model_construct(**data)
        for attr in ("__dict__", "__pydantic_fields_set__", "__pydantic_extra__", "__pydantic_private__"):
            object.__setattr__(self, attr, getattr(built, attr))

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

        def decorator(cls: type) -> type:
            if name in self._entries:
                raise RegistryError(
                    f"duplicate {self.kind} name {name!r}; already registered: {', '.join(self.names())}"
                )
            if self.base is not None and not (isinstance(cls, type) and issubclass(cls, self.base)):
                raise TypeError(f"{self.kind} {name!r}: {cls!r} does not implement {self.base.__name__}")
            bound = config_cls.__dict__.get("registry_name", "")
            if bound and bound != name:
                raise RegistryError(f"{config_cls.__name__} is already registered as {bound!r}")
            config_cls.registry_name = name
            self._entries[name] = Entry(name, cls, config_cls)
            return cls

        return decorator

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

    def name_of(self, config: ComponentConfig) -> str:
        for entry in self._entries.values():
            if type(config) is entry.config_cls:
                return entry.name
        raise RegistryError(f"{type(config).__name__} is not a registered {self.kind} config")

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
            self.name_of(data)
            return data
        if not isinstance(data, dict) or "name" not in data:
            raise ValueError(f"a {self.kind} config must be a mapping with a 'name' key, got {data!r}")
        fields = dict(data)
        entry = self.get(fields.pop("name"))
        return entry.config_cls.model_validate(fields)

    # -- typing helpers ---------------------------------------------------
    def config_union(self) -> Any:
        """``Union`` of the registered configs, each a named tyro subcommand."""
        if not self._entries:
            raise RegistryError(f"no {self.kind} is registered")
        members = tuple(
            Annotated[e.config_cls, tyro.conf.subcommand(e.name)] for e in self._entries.values()
        )
        return members[0] if len(members) == 1 else Union[members]  # noqa: UP007

    def field(self) -> Any:
        """Annotation for a config slot: the tyro Union plus pydantic (de)serialisation.

        Pydantic validates a dict ``{"name": ...}`` through :meth:`load` and
        serialises an instance through :meth:`dump`, so an experiment config
        round-trips through JSON whatever variants it holds.
        """
        return Annotated[
            self.config_union(),
            pydantic.BeforeValidator(self.load),
            pydantic.PlainSerializer(self.dump, return_type=dict),
        ]

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"


def registry_slots(model_cls: type[BaseModel], prefix: str = "") -> dict[str, Registry]:
    """Dotted paths of every registry-typed field under ``model_cls`` (recursing into all variants).

    E.g. ``{"transporter": TRANSPORTERS, "process.schedule": SCHEDULES, ...}``;
    a command line uses it to name an unknown ``slot:variant`` precisely.
    """
    found: dict[str, Registry] = {}
    for name, field in model_cls.model_fields.items():
        path = f"{prefix}{name}"
        registry = next(
            (
                m.func.__self__
                for m in field.metadata
                if isinstance(m, pydantic.BeforeValidator) and isinstance(getattr(m.func, "__self__", None), Registry)
            ),
            None,
        )
        if registry is not None:
            found[path] = registry
            for entry in registry._entries.values():
                found.update(registry_slots(entry.config_cls, prefix=f"{path}."))
        elif isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            found.update(registry_slots(field.annotation, prefix=f"{path}."))
    return found
