"""The autoencoder file (``autoencoder.pt``): one atomic file with the variant, its config, weights and latent
statistics, written at the end of ``ntm autoencoder train`` and read by ``conv --autoencoder.weights``,
``pretrained --autoencoder.path`` and ``ntm shards write --encode``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ntm.autoencoders.base import AUTOENCODERS, Autoencoder, AutoencoderConfig, AutoencoderError
from ntm.train.checkpoint import CheckpointError, is_checkpoint_dir, load_checkpoint, save_checkpoint

FILE_NAME = "autoencoder.pt"
KIND = "ntm-autoencoder-1"


def resolve(path: str | Path) -> Path:
    """An autoencoder run directory (its ``autoencoder.pt``) or the file itself -> the file."""
    path = Path(path).expanduser()
    if is_checkpoint_dir(path):
        raise AutoencoderError(f"{path} is not an autoencoder file (an ntm run checkpoint? pass the autoencoder run's "
                               f"directory or its {FILE_NAME})")
    if path.is_dir():
        candidate = path / FILE_NAME
        if not candidate.is_file():
            raise AutoencoderError(f"{path} holds no {FILE_NAME}: not an autoencoder run, or its training has not "
                                   "finished (`ntm autoencoder train` writes it at the end)")
        return candidate
    if not path.exists():
        raise AutoencoderError(f"autoencoder weights {path} do not exist")
    return path


def save_autoencoder(path: str | Path, model: Autoencoder, config: AutoencoderConfig,
                     image_shape: tuple[int, ...], extra: dict[str, Any] | None = None) -> Path:
    """Write ``model`` (EMA weights and fitted latent statistics, on CPU) with its config, atomically."""
    state = {
        "kind": KIND,
        "name": AUTOENCODERS.name_of(config),
        "config": config.replace(weights=None).model_dump(mode="json") if "weights" in type(config).model_fields
        else config.model_dump(mode="json"),
        "image_shape": list(image_shape),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "fingerprint": model.fingerprint(),
        **(extra or {}),
    }
    save_checkpoint(path, state)
    return Path(path)


def read(path: str | Path) -> tuple[Path, dict[str, Any]]:
    """``(file, state)`` of an autoencoder file; :class:`AutoencoderError` naming the file when it is not one."""
    file = resolve(path)
    try:
        state = load_checkpoint(file)
    except CheckpointError as e:
        raise AutoencoderError(f"autoencoder weights {file} are not an autoencoder.pt ({e})") from None
    if state.get("kind") != KIND:
        raise AutoencoderError(f"{file} is not an autoencoder file (an ntm run checkpoint? pass the autoencoder run's "
                               f"directory or its {FILE_NAME})")
    return file, state


def load_into(model: Autoencoder, config: AutoencoderConfig, path: str | Path) -> Autoencoder:
    """Load the file at ``path`` into ``model`` built from ``config``; one line naming the file and the field on a
    mismatch (another variant, another architecture or image shape)."""
    file, state = read(path)
    name = AUTOENCODERS.name_of(config)
    if state["name"] != name:
        raise AutoencoderError(f"{file} holds autoencoder '{state['name']}', not '{name}'")
    saved = AUTOENCODERS.get(name).config_cls.model_validate(state["config"])
    wanted = getattr(config, "architecture", lambda: config.model_dump())()
    have = getattr(saved, "architecture", lambda: saved.model_dump())()
    differing = [f"autoencoder.{k} is {wanted[k]!r} but {file} has {have.get(k)!r}" for k in wanted if wanted[k] != have.get(k)]
    if differing:
        raise AutoencoderError("; ".join(differing))
    if state["image_shape"][0] != model.image_channels:
        raise AutoencoderError(f"{file} was trained on {state['image_shape'][0]}-channel images; the data has "
                               f"{model.image_channels}")
    try:
        model.load_state_dict(state["state_dict"])
    except RuntimeError as e:
        first = " ".join(str(e).split())[:240]
        raise AutoencoderError(f"{file} does not load into autoencoder '{name}': {first}") from None
    return model


def load_autoencoder(path: str | Path, image_shape: tuple[int, ...] | None = None) -> tuple[Autoencoder, AutoencoderConfig]:
    """The autoencoder in the file at ``path`` (built from its own config) and that config; ``image_shape``
    (default: the one it was trained on) is checked against it."""
    file, state = read(path)
    config = AUTOENCODERS.get(state["name"]).config_cls.model_validate(state["config"])
    shape = tuple(image_shape or state["image_shape"])
    if len(shape) == 3 and shape[0] != state["image_shape"][0]:
        raise AutoencoderError(f"{file} was trained on {state['image_shape'][0]}-channel images; the data has "
                               f"{shape[0]}")
    model = config.build(shape)
    try:
        model.load_state_dict(state["state_dict"])
    except RuntimeError as e:
        first = " ".join(str(e).split())[:240]
        raise AutoencoderError(f"{file} does not load into autoencoder '{state['name']}': {first}") from None
    return model, config


__all__ = ["FILE_NAME", "load_autoencoder", "load_into", "read", "resolve", "save_autoencoder"]
