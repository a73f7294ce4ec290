"""The command-line view of a config tree: every slot a tyro subcommand, built when parsing.

tyro is never handed the pydantic config classes themselves. :func:`cli_type`
mirrors a config class, for one default value, as frozen dataclasses built
from the registries *as they are now* (so variants registered by plugins after
import are there), with these rules:

- a registry slot becomes a ``Union`` with one member per registered variant,
  named ``slot:name``; each member is a mirror of *exactly* that variant's
  config class (a config that subclasses another is still its own member);
- the member of the variant the default holds keeps the default's field
  values; every other member starts from its class defaults;
- a field annotated ``Annotated[SomeConfig, Inline()]`` shows its fields at
  the parent's level (``Experiment.model`` puts ``transporter:tarflow`` and
  ``--predictor.depth`` at the top);
- an optional config field (``init: InitConfig | None``) is a slot of two variants: ``init:none`` and
  ``init:<name>``, the name being the config class's ``cli_name`` (else its class name in kebab case);
- field docstrings are the help text.

tyro builds the mirror objects without validating anything; :func:`parse`
turns them back into plain data (:func:`to_data`) and validates the whole
tree once, so every bad field is reported together, one line each, by the
path the user typed (:class:`ConfigError`).
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import re
import types
import typing
from typing import Annotated, Any, Mapping, Sequence, TypeVar, Union

import pydantic
import tyro
from pydantic import BaseModel

from .core import Registry, RegistryError, slot_registry

M = TypeVar("M", bound=BaseModel)
_MISSING = dataclasses.MISSING


@dataclasses.dataclass(frozen=True)
class Inline:
    """Field marker: show a nested config's fields at the parent's level on the command line."""


class ConfigError(ValueError):
    """A config tree that failed validation: ``problems`` is a list of ``(path, message)``."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        super().__init__("\n".join(f"{p}: {m}" if p else m for p, m in problems))


# -- mirrors ------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class _MirrorInfo:
    config_cls: type[BaseModel]
    slot_name: str | None
    inline: dict[str, tuple[str, ...]]
    """Inlined field -> the names of its fields, hoisted into this mirror."""


def _is_inline(field: Any) -> bool:
    return any(isinstance(m, Inline) for m in field.metadata)


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _optional_model(annotation: Any) -> type[BaseModel] | None:
    """``X`` for an annotation ``X | None`` (``Optional[X]``) with ``X`` a config class, else ``None``."""
    if typing.get_origin(annotation) not in (Union, types.UnionType):
        return None
    members = [a for a in typing.get_args(annotation) if a is not type(None)]
    if len(members) == 1 and len(typing.get_args(annotation)) == 2 and _is_model(members[0]):
        return members[0]
    return None


def optional_variant(config_cls: type[BaseModel]) -> str:
    """The command-line name of an optional config's one variant (``init:run``): its ``cli_name``, else its class
    name in kebab case."""
    name = getattr(config_cls, "cli_name", None)
    return name if isinstance(name, str) else re.sub(r"(?<!^)(?=[A-Z])", "-", config_cls.__name__).lower()


def _optional_slot(config_cls: type[BaseModel], value: Any) -> tuple[Any, Any]:
    """``(Union of none and the config's mirror, the default)`` of an optional config field."""
    default = value if isinstance(value, config_cls) else _class_default(config_cls)
    mirror_type, instance = _mirror(config_cls, default)
    spec = tyro.conf.subcommand(optional_variant(config_cls), **({"default": instance} if instance is not _MISSING else {}))
    none = Annotated[None, tyro.conf.subcommand("none", default=None)]
    chosen = None if value is None or value is _MISSING else instance
    return Union[none, Annotated[mirror_type, spec]], chosen  # noqa: UP007


def _field_default(field: Any) -> Any:
    return _MISSING if field.is_required() else field.get_default(call_default_factory=True)


def _class_default(config_cls: type[BaseModel]) -> BaseModel | None:
    """``config_cls()`` when all its fields have valid defaults, else ``None``."""
    try:
        return config_cls()
    except (pydantic.ValidationError, TypeError, ValueError):
        return None


def _slot(registry: Registry, value: Any) -> tuple[Any, Any]:
    """``(Union of one member per variant, the member instance for value)``."""
    members, chosen = [], _MISSING
    for entry in registry.entries():
        default = value if type(value) is entry.config_cls else _class_default(entry.config_cls)
        mirror_type, instance = _mirror(entry.config_cls, default, slot_name=entry.name)
        spec = tyro.conf.subcommand(entry.name, default=instance) if instance is not _MISSING else tyro.conf.subcommand(entry.name)
        members.append(Annotated[mirror_type, spec])
        if default is value and value is not None:
            chosen = instance
    if not members:
        raise RegistryError(f"no {registry.kind} is registered")
    return (Union[tuple(members)] if len(members) > 1 else members[0]), chosen  # noqa: UP007


def _mirror(config_cls: type[BaseModel], default: BaseModel | None, slot_name: str | None = None) -> tuple[type, Any]:
    """``(dataclass type, instance)`` mirroring ``config_cls`` with ``default``'s values (``None``: class defaults)."""
    fields: list[tuple[str, Any, Any]] = []
    values: dict[str, Any] = {}
    inline: dict[str, tuple[str, ...]] = {}
    complete = True

    def add(name: str, annotation: Any, value: Any, help_text: str | None) -> None:
        nonlocal complete
        if any(f[0] == name for f in fields):
            raise TypeError(f"{config_cls.__name__}: field {name!r} appears twice on the command line (inlined)")
        if help_text:
            annotation = Annotated[annotation, tyro.conf.arg(help=help_text)]
        if value is _MISSING:
            spec = dataclasses.field()
        elif isinstance(value, (dict, list, set)):  # a mutable default: each instance its own copy
            spec = dataclasses.field(default_factory=lambda value=value: copy.deepcopy(value))
        else:
            spec = dataclasses.field(default=value)
        fields.append((name, annotation, spec))
        if value is _MISSING:
            complete = False
        else:
            values[name] = value

    for name, field in config_cls.model_fields.items():
        value = getattr(default, name) if default is not None else _field_default(field)
        registry = slot_registry(field)
        if registry is not None:
            annotation, value = _slot(registry, value)
            add(name, annotation, value, field.description)
        elif _optional_model(field.annotation) is not None:
            annotation, value = _optional_slot(_optional_model(field.annotation), value)
            add(name, annotation, value, field.description)
        elif _is_model(field.annotation) and _is_inline(field):
            sub_type, sub_value = _mirror(field.annotation, value if value is not _MISSING else None)
            inline[name] = tuple(f.name for f in dataclasses.fields(sub_type))
            for f in dataclasses.fields(sub_type):
                add(f.name, f.type, getattr(sub_value, f.name, _MISSING) if sub_value is not _MISSING else _MISSING, None)
        elif _is_model(field.annotation):
            sub_type, sub_value = _mirror(field.annotation, value if value is not _MISSING else None)
            add(name, sub_type, sub_value, field.description)
        else:
            add(name, field.annotation, value, field.description)

    mirror = dataclasses.make_dataclass(config_cls.__name__, fields, frozen=True, kw_only=True)
    mirror.__doc__ = config_cls.__doc__ or ""
    mirror.__ntm_mirror__ = _MirrorInfo(config_cls, slot_name, inline)
    return mirror, (mirror(**values) if complete else _MISSING)


def cli_type(config_cls: type[BaseModel], default: BaseModel | None = None) -> tuple[type, Any]:
    """``(type, default instance)`` for ``tyro.cli``: ``config_cls`` mirrored with ``default``'s values."""
    return _mirror(config_cls, default)


def to_data(obj: Any) -> Any:
    """A parsed mirror -> plain data for ``model_validate`` (slots as ``{"name": ..., **fields}``)."""
    info = getattr(type(obj), "__ntm_mirror__", None)
    if info is None:
        if isinstance(obj, (tuple, list)):
            return type(obj)(to_data(v) for v in obj)
        return obj
    out: dict[str, Any] = {"name": info.slot_name} if info.slot_name else {}
    out.update({f.name: to_data(getattr(obj, f.name)) for f in dataclasses.fields(obj)})
    for outer, names in info.inline.items():
        out[outer] = {n: out.pop(n) for n in names}
    return out


# -- paths as the user types them ------------------------------------------------------
def inline_prefixes(config_cls: type[BaseModel], prefix: str = "") -> set[str]:
    """Dotted paths of inlined fields (``{"model"}`` for an experiment), recursing into nested models."""
    found: set[str] = set()
    for name, field in config_cls.model_fields.items():
        if _is_model(field.annotation):
            if _is_inline(field):
                found.add(f"{prefix}{name}")
            found |= inline_prefixes(field.annotation, f"{prefix}{name}.")
    return found


def cli_path(config_cls: type[BaseModel], path: str) -> str:
    """A data path (``model.process.schedule.t_min``) as typed on the command line (``process.schedule.t_min``)."""
    parts = path.split(".")
    inlined = inline_prefixes(config_cls)
    kept = [p for i, p in enumerate(parts) if ".".join(parts[: i + 1]) not in inlined]
    return ".".join(kept)


def config_error(err: pydantic.ValidationError, config_cls: type[BaseModel] | None = None) -> ConfigError:
    """One ``(path, message)`` per problem; paths as typed on the command line when ``config_cls`` is given."""
    problems = []
    for e in err.errors():
        path = ".".join(str(p) for p in e["loc"])
        if config_cls is not None and path:
            path = cli_path(config_cls, path)
        problems.append((path, e["msg"].removeprefix("Value error, ")))
    return ConfigError(problems)


def cli_slots(config_cls: type[BaseModel]) -> dict[str, Registry]:
    """Every slot by its command-line path (``predictor``, ``process.schedule``, ``data``, ...)."""
    from .core import registry_slots

    return {cli_path(config_cls, path): reg for path, reg in registry_slots(config_cls).items()}


def optional_slots(config_cls: type[BaseModel], prefix: str = "") -> dict[str, list[str]]:
    """Every optional config field by its command-line path, with its variants (``{"init": ["none", "run"]}``)."""
    found: dict[str, list[str]] = {}
    for name, field in config_cls.model_fields.items():
        path = f"{prefix}{name}"
        inner = _optional_model(field.annotation)
        if inner is not None:
            found[cli_path(config_cls, path) if not prefix else path] = ["none", optional_variant(inner)]
        elif _is_model(field.annotation) and slot_registry(field) is None:
            sub = optional_slots(field.annotation, "" if _is_inline(field) else f"{path}.")
            found.update(sub)
    return found


def did_you_mean(word: str, choices: Sequence[str]) -> str:
    """``" (did you mean 'x'?)"`` for a close match, else ``""``."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def check_slot_tokens(config_cls: type[BaseModel], args: Sequence[str]) -> list[str]:
    """Name an unknown ``slot:variant`` (and a close match) before tyro's generic message.

    Returns ``args`` without the tokens that pick the only variant of a single-variant slot
    (tyro has no subcommand for a choice of one; the slot holds that variant anyway).
    """
    slots = cli_slots(config_cls)
    optional = optional_slots(config_cls)
    kept = []
    for token in args:
        kept.append(token)
        if token.startswith("-") or ":" not in token:
            continue
        slot, variant = token.rsplit(":", 1)
        if slot in optional and slot not in slots:
            if variant not in optional[slot]:
                raise RegistryError(f"{token}: {slot} is {' or '.join(f'{slot}:{v}' for v in optional[slot])}"
                                    f"{did_you_mean(variant, optional[slot])}")
            continue
        if slot not in slots:
            raise RegistryError(f"{token}: unknown slot {slot!r}{did_you_mean(slot, list(slots))}; "
                                f"slots: {', '.join(sorted(slots))}")
        registry = slots[slot]
        if variant not in registry:
            raise RegistryError(f"{token}: unknown {registry.kind} {variant!r}{did_you_mean(variant, registry.names())}; "
                                f"known {registry.kind}s: {', '.join(registry.names())}")
        if len(registry) == 1:
            kept.pop()
    return kept


# -- parsing ------------------------------------------------------------------------
def parse(
    config_cls: type[M],
    args: Sequence[str],
    *,
    default: M | None = None,
    presets: Mapping[str, M] | None = None,
    **tyro_kwargs: Any,
) -> M:
    """Parse ``args`` into a validated ``config_cls``.

    With ``presets``, the first argument names one (a subcommand) whose values
    are the defaults; otherwise ``default`` (or the class defaults) is. Raises
    :class:`ConfigError` listing every invalid field by its command-line path.
    """
    args = check_slot_tokens(config_cls, list(args))
    if presets and args and args[0] in presets and not any(a in ("-h", "--help") for a in args):
        # a named preset is the default: only its mirror is built (building every preset's is most of a parse's
        # time); --help still shows the whole choice
        name, args, default, presets = args[0], args[1:], presets[args[0]], None
        if "prog" in tyro_kwargs:
            tyro_kwargs = {**tyro_kwargs, "prog": f"{tyro_kwargs['prog']} {name}"}
    if presets:
        members = []
        for name, preset in presets.items():
            mirror_type, instance = cli_type(config_cls, preset)
            members.append(Annotated[mirror_type, tyro.conf.subcommand(name, default=instance)])
        target = Union[tuple(members)] if len(members) > 1 else members[0]  # noqa: UP007
        parsed = tyro.cli(tyro.conf.CascadeSubcommandArgs[target], args=args, **tyro_kwargs)
    else:
        mirror_type, instance = cli_type(config_cls, default)
        kwargs = {"default": instance} if instance is not _MISSING else {}
        parsed = tyro.cli(tyro.conf.CascadeSubcommandArgs[mirror_type], args=args, **kwargs, **tyro_kwargs)
    try:
        return config_cls.model_validate(to_data(parsed))
    except pydantic.ValidationError as e:
        raise config_error(e, config_cls) from None


__all__ = [
    "ConfigError", "Inline", "check_slot_tokens", "cli_path", "cli_slots", "cli_type", "config_error",
    "did_you_mean", "parse", "to_data",
]
