import json
import subprocess
import sys

import pydantic
import pytest

from typing import Annotated

from ntm.registry import ComponentConfig, ConfigError, Inline, Registry, RegistryError, parse


class Base:
    pass


def make_registry() -> tuple[Registry, type, type]:
    reg = Registry("widget", base=Base)

    class SmallConfig(ComponentConfig):
        size: int = 3
        """How small."""

        def build(self):
            return Small()

    class LargeConfig(ComponentConfig):
        depth: int = 2

    @reg.register("small", SmallConfig)
    class Small(Base):
        pass

    @reg.register("large", LargeConfig)
    class Large(Base):
        pass

    return reg, SmallConfig, LargeConfig


def test_lookup_and_build():
    reg, small_cfg, _ = make_registry()
    assert reg.names() == ["small", "large"]
    assert reg.get("small").config_cls is small_cfg
    assert isinstance(reg.build(small_cfg()), Base)
    assert reg.name_of(small_cfg(size=5)) == "small"


def test_unknown_name_lists_known_names():
    reg, _, _ = make_registry()
    with pytest.raises(RegistryError, match=r"unknown widget 'nope'; known widgets: small, large"):
        reg.get("nope")


def test_a_different_class_under_a_taken_name_is_one_line_naming_both():
    reg, _, _ = make_registry()

    class OtherConfig(ComponentConfig):
        pass

    with pytest.raises(RegistryError) as info:
        reg.register("small", OtherConfig)(type("Other", (Base,), {}))
    message = str(info.value)
    assert "\n" not in message
    assert "'small' is taken by" in message and "Small" in message and "Other" in message


def test_registering_the_same_class_again_is_a_no_op():
    reg, small_cfg, _ = make_registry()
    small_cls = reg.get("small").cls
    assert reg.register("small", small_cfg)(small_cls) is small_cls
    assert reg.names() == ["small", "large"] and reg.get("small").cls is small_cls


def test_a_module_imported_twice_re_registers_without_error(tmp_path, monkeypatch):
    """A notebook cell run twice (or importlib.reload) defines new class objects under the same names."""
    import importlib

    (tmp_path / "gadget_registry.py").write_text(
        "from registry import Registry\n"
        "class Base:\n"
        "    pass\n"
        "SHARED = Registry('gadget', base=Base)\n"
    )
    (tmp_path / "widget_plugin.py").write_text(
        "from registry import ComponentConfig\n"
        "from gadget_registry import Base, SHARED\n"
        "class GadgetConfig(ComponentConfig):\n"
        "    size: int = 1\n"
        "@SHARED.register('gadget', GadgetConfig)\n"
        "class Gadget(Base):\n"
        "    pass\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module("widget_plugin")
    SHARED = importlib.import_module("gadget_registry").SHARED
    old_config = module.GadgetConfig(size=4)
    module = importlib.reload(module)
    assert SHARED.get("gadget").config_cls is module.GadgetConfig
    # an instance made before the reload still names its variant, and loads as the current class
    assert SHARED.name_of(old_config) == "gadget"
    assert type(SHARED.load(old_config)) is module.GadgetConfig and SHARED.load(old_config).size == 4


def test_unregister_removes_a_variant():
    reg, _, _ = make_registry()
    reg.unregister("large")
    assert reg.names() == ["small"]
    with pytest.raises(RegistryError, match="unknown widget 'large'"):
        reg.unregister("large")


def test_a_subclass_config_is_its_own_variant():
    reg, small_cfg, _ = make_registry()

    class TinyConfig(small_cfg):
        pass

    reg.register("tiny", TinyConfig)(type("Tiny", (Base,), {}))
    assert reg.name_of(small_cfg()) == "small" and reg.name_of(TinyConfig()) == "tiny"


def test_rejects_mutable_config_and_wrong_base():
    reg = Registry("widget", base=Base)

    class Mutable(ComponentConfig):
        model_config = pydantic.ConfigDict(frozen=False, extra="forbid")

    with pytest.raises(TypeError, match="frozen"):
        reg.register("m", Mutable)

    class Fine(ComponentConfig):
        pass

    with pytest.raises(TypeError, match="does not implement Base"):
        reg.register("f", Fine)(object)


def test_config_is_frozen_and_forbids_extra():
    _, small_cfg, _ = make_registry()
    with pytest.raises(pydantic.ValidationError, match="extra"):
        small_cfg(sise=3)
    cfg = small_cfg()
    with pytest.raises(pydantic.ValidationError):
        cfg.size = 4


def test_field_round_trips_through_json_and_the_command_line():
    reg, small_cfg, large_cfg = make_registry()

    class Experiment(ComponentConfig):
        widget: reg.field() = small_cfg()
        lr: float = 1e-3

    exp = Experiment(widget=large_cfg(depth=7))
    data = json.loads(json.dumps(exp.model_dump(mode="json")))
    assert data["widget"] == {"name": "large", "depth": 7}
    assert Experiment.model_validate(data) == exp
    with pytest.raises(pydantic.ValidationError, match="unknown widget 'huge'"):
        Experiment.model_validate({"widget": {"name": "huge"}})

    presets = {"base": Experiment(), "deep": Experiment(widget=large_cfg(depth=5))}
    assert parse(Experiment, ["base", "widget:large", "--widget.depth", "9"], presets=presets).widget == large_cfg(depth=9)
    assert parse(Experiment, ["base", "--widget.size", "11"], presets=presets).widget == small_cfg(size=11)
    # the preset's own variant keeps its values; another variant starts from its class defaults
    assert parse(Experiment, ["deep", "widget:large"], presets=presets).widget == large_cfg(depth=5)
    assert parse(Experiment, ["base", "widget:large"], presets=presets).widget == large_cfg()


def test_a_variant_registered_after_the_config_class_validates_everywhere():
    reg, small_cfg, _ = make_registry()

    class Experiment(ComponentConfig):
        widget: reg.field() = small_cfg()

    class LateConfig(ComponentConfig):
        speed: int = 2

    @reg.register("late", LateConfig)
    class Late(Base):
        pass

    assert Experiment(widget=LateConfig()).widget == LateConfig()
    assert Experiment.model_validate({"widget": {"name": "late", "speed": 3}}).widget == LateConfig(speed=3)
    assert parse(Experiment, ["widget:late", "--widget.speed", "4"]).widget == LateConfig(speed=4)


def test_every_bad_field_is_reported_by_its_command_line_path():
    reg, small_cfg, _ = make_registry()

    class Inner(ComponentConfig):
        widget: reg.field() = small_cfg()
        rate: float = pydantic.Field(1.0, gt=0)

    class Experiment(ComponentConfig):
        inner: Annotated[Inner, Inline()] = Inner()
        lr: float = pydantic.Field(1e-3, gt=0)

    with pytest.raises(ConfigError) as info:
        parse(Experiment, ["--rate", "-1", "--lr", "0"])
    assert sorted(path for path, _ in info.value.problems) == ["lr", "rate"]
    assert parse(Experiment, ["widget:large"]).inner.widget.registry_name == "large"


def test_registry_package_imports_nothing_of_the_other_layers():
    """ntm.registry loads the (light) ntm package init and itself: no model code, no torch."""
    code = ("import sys, ntm.registry; other = [m for m in sys.modules if m.startswith('ntm.') "
            "and not m.startswith('ntm.registry')]; assert not other, other; assert 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)
