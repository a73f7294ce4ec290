import json
import subprocess
import sys

import pydantic
import pytest
import tyro

from registry import ComponentConfig, Registry, RegistryError


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


def test_duplicate_name_fails_listing_known():
    reg, _, _ = make_registry()

    class OtherConfig(ComponentConfig):
        pass

    with pytest.raises(RegistryError, match="duplicate widget name 'small'.*small, large"):
        reg.register("small", OtherConfig)(type("X", (Base,), {}))


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


def test_field_round_trips_through_json_and_tyro():
    reg, small_cfg, large_cfg = make_registry()

    class Experiment(pydantic.BaseModel):
        model_config = pydantic.ConfigDict(frozen=True, extra="forbid")
        widget: reg.field() = small_cfg()
        lr: float = 1e-3

    exp = Experiment(widget=large_cfg(depth=7))
    data = json.loads(json.dumps(exp.model_dump(mode="json")))
    assert data["widget"] == {"name": "large", "depth": 7}
    assert Experiment.model_validate(data) == exp
    with pytest.raises(pydantic.ValidationError, match="unknown widget 'huge'"):
        Experiment.model_validate({"widget": {"name": "huge"}})

    presets = {"base": Experiment()}
    cli_type = tyro.conf.CascadeSubcommandArgs[tyro.extras.subcommand_type_from_defaults(presets)]
    parsed = tyro.cli(cli_type, args=["base", "widget:large", "--widget.depth", "9"])
    assert parsed.widget == large_cfg(depth=9)
    parsed = tyro.cli(cli_type, args=["base", "--widget.size", "11"])
    assert parsed.widget == small_cfg(size=11)


def test_registry_package_does_not_import_ntm():
    code = "import sys, registry; assert not any(m == 'ntm' or m.startswith('ntm.') for m in sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True)
