"""The export format of ``ntm export``: one safetensors file that samples and scores with no run directory.

**The export format** (``ntm-export-2``; :func:`write_export`, :func:`load_export`) is ONE ``.safetensors`` file.
Its tensors: the sampling weights under ``model.``; for a run on latents the autoencoder's weights (latent
statistics included) under ``autoencoder.``; a distilled learned denoiser under ``denoiser.`` when the run had one.
The safetensors header's string metadata holds ``format`` and, as JSON under ``ntm``, everything else a model needs
to sample and score with neither its run directory nor its data: the experiment config, the training step and
which weights these are, the model's dims, the data's shape, kind, class count and names, its normalisation
statistics (what ``data_stats.json`` holds), how samples are shown (``(x + 1) / 2`` for images), the class prior
of the training labels (Bayes-rule classification), the autoencoder's variant, config and fingerprint, and a
SHA-256 digest of each part's tensors (safetensors itself has no checksum: a flipped bit is caught by the digest).
Reading one parses a JSON header and raw little-endian arrays: nothing is unpickled and no code runs.

Why one file and not a directory: it is one thing to copy, share, checksum and replace atomically, it cannot be
half-copied without the reader noticing (the header gives every tensor's extent), and the safetensors header is
made for exactly this string metadata beside the tensors.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import time
from pathlib import Path
from typing import Any, Iterator, Literal

import numpy as np
import pydantic
import torch
from torch import Tensor

from ntm.atomic import atomic_path
from ntm.autoencoders import AUTOENCODERS, Autoencoder, LatentSource
from ntm.data.base import DATA_SOURCES, Batch, DataError, DataSource, DataSpec
from ntm.denoisers import DenoiserConfig, LearnedDenoiser, LearnedDenoiserConfig
from ntm.denoisers.learned import DENOISER_DIR, DenoiserNet, load_distilled
from ntm.eval.likelihood import class_prior
from ntm.experiments.build import build_model, pixel_images
from ntm.experiments.config import Experiment
from ntm.experiments.core import version
from ntm.registry.cli import config_error
from ntm.spec import ModelDims
from ntm.train.checkpoint import (
    CheckpointError, CheckpointManager, is_checkpoint_dir, load_sampling_weights, read_sampling_state,
)


EXPORT_FORMAT = "ntm-export-2"
"""The ``format`` entry of an export's safetensors metadata (``ntm-export-1`` was a pickled ``.pt`` file)."""
EXPORT_SUFFIX = ".safetensors"
PARTS = ("model", "autoencoder", "denoiser")
"""The tensor groups of an export, each under the prefix ``<part>.`` and with a digest of its own."""
_MAX_HEADER = 100 * 2**20
"""The largest safetensors header read (safetensors' own limit)."""


class ExportError(CheckpointError):
    """An export file that is missing, corrupt, truncated, foreign or of another format; the message (one line)
    names the file."""


@dataclasses.dataclass
class LoadedRun:
    """A trained model ready to sample and score, and where it came from."""

    experiment: Experiment
    data: DataSource
    """The run's data source; for an export, its statistics alone (:class:`ExportedData`, under a
    :class:`LatentSource` for a run on latents)."""
    model: torch.nn.Module
    step: int
    """The training step of the weights."""
    weights: Literal["ema", "raw"]
    """Which weights were loaded ("ema" falls back to the raw weights of a checkpoint without an EMA)."""
    source: Path
    """The run directory, or the export file."""
    checkpoint: Path | None = None
    """The checkpoint read (``None`` for an export)."""
    denoiser: DenoiserConfig | None = None
    """The distilled learned denoiser an export carries (``None``: none, or not an export)."""

    @property
    def is_export(self) -> bool:
        return self.checkpoint is None

    def triple(self) -> tuple[Experiment, DataSource, torch.nn.Module]:
        return self.experiment, self.data, self.model


class EmbeddedDenoiserConfig(LearnedDenoiserConfig):
    """A learned denoiser with its distilled network in hand, e.g. the one an export carries. Not a registered
    variant and never saved in a config: :func:`denoiser_for` hands it to the samplers (``build()`` uses the
    network as it is; ``for_run`` looks nowhere)."""

    _net: Any = pydantic.PrivateAttr(None)

    @classmethod
    def of(cls, network: dict[str, Any], net: DenoiserNet) -> "EmbeddedDenoiserConfig":
        config = cls.model_validate(network)
        config._net = net
        return config

    @property
    def net(self) -> DenoiserNet:
        return self._net

    def for_run(self, run_dir: Path) -> "EmbeddedDenoiserConfig":
        return self

    def build(self) -> LearnedDenoiser:
        return LearnedDenoiser(self, net=self._net)


class ExportedData(DataSource):
    """The data side of an export: the spec, statistics, class names, class prior and display of the run's data, and
    no examples (``train_batches`` / ``eval_batches`` raise a one-line :class:`DataError`)."""

    def __init__(self, file: Path, spec: DataSpec, info: dict[str, Any]) -> None:
        self.file = Path(file)
        self.spec = spec
        self.info = info
        self.display = info["display"]
        self.class_names = info.get("class_names")
        prior = info.get("log_prior")
        self.log_prior = None if prior is None else torch.tensor(prior, dtype=torch.float64)

    def train_batches(self, batch_size: int, *, seed: int, start_step: int = 0, rank: int = 0,
                      world_size: int = 1) -> Iterator[Batch]:
        raise DataError(f"{self.file} is an exported model: it carries no training data")

    def eval_batches(self, batch_size: int, *, max_examples: int | None = None) -> Iterator[Batch]:
        raise DataError(f"{self.file} is an exported model: it carries no held-out data (score your own examples)")

    def stats(self) -> dict:
        return json.loads(json.dumps(self.info.get("stats") or {}))

    def to_display(self, x: Tensor) -> Tensor:
        return ((x + 1) / 2).clamp(0, 1) if self.display == "unit" else x


def exported_data(data: DataSource) -> ExportedData | None:
    """The :class:`ExportedData` under ``data`` (itself, or inside a :class:`LatentSource`); ``None`` for real data."""
    while data is not None:
        if isinstance(data, ExportedData):
            return data
        data = getattr(data, "inner", None)
    return None


def display_kind(data: DataSource) -> Literal["unit", "identity"] | None:
    """How ``data.to_display`` shows the model's tensors: ``"unit"`` (images in ``[-1, 1]`` -> ``(x + 1) / 2`` in
    ``[0, 1]``; for latents, of the decoded images), ``"identity"`` (points), or ``None`` (a source's own way)."""
    exported = exported_data(data)
    if exported is not None:
        return exported.display
    if isinstance(data, LatentSource):  # decodes, then maps [-1, 1] to [0, 1] (LatentSource.to_display)
        return "unit"
    shape = tuple(data.spec.shape)
    probe = torch.linspace(-1.5, 1.5, 2 * int(np.prod(shape)), dtype=torch.float32).reshape(2, *shape)
    try:
        shown = data.to_display(probe.clone())
    except Exception:  # noqa: BLE001 - any failure means: not a display this format knows
        return None
    if not isinstance(shown, Tensor) or shown.shape != probe.shape:
        return None
    if data.spec.kind == "images" and torch.allclose(shown.float(), ((probe + 1) / 2).clamp(0, 1)):
        return "unit"
    if torch.equal(shown.float(), probe):
        return "identity"
    return None


def class_log_prior(data: DataSource, num_classes: int) -> Tensor:
    """``(C,)`` log class frequencies of the training labels (``ntm eval --classify``'s prior); an export's stored
    one; uniform where neither is known."""
    exported = exported_data(data)
    if exported is not None:
        prior = exported.log_prior
        if prior is None or prior.numel() != num_classes:
            return torch.full((num_classes,), -float(np.log(num_classes)), dtype=torch.float64)
        return prior.clone()
    return class_prior(pixel_images(data), num_classes)  # the labels alone: latents need not be encoded for them


def looks_like_export(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a file that begins as a safetensors file does (the export format's container); cheap. A
    foreign safetensors file also does: :func:`read_export` says then that it is no ntm export."""
    path = Path(path)
    try:
        if not path.is_file():
            return False
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(9)
    except OSError:
        return False
    if len(head) < 9:
        return False
    n = int.from_bytes(head[:8], "little")
    return 2 <= n <= min(size - 8, _MAX_HEADER) and head[8:9] == b"{"


@dataclasses.dataclass(frozen=True)
class ExportInfo:
    """An export's header: what it holds, without its tensors."""

    path: Path
    experiment: Experiment
    step: int
    weights: Literal["ema", "raw"]
    payload: dict[str, Any]
    """The whole ``ntm`` metadata entry (see the module docstring)."""
    tensors: dict[str, dict[str, Any]]
    """The safetensors index: name -> ``{"dtype", "shape", "data_offsets"}``."""


def _corrupt(path: Path, what: str) -> ExportError:
    return ExportError(f"export {path} is corrupt or not an ntm export ({what})")


def read_export(path: str | os.PathLike[str]) -> ExportInfo:
    """Read and check an export's header (no tensors): :class:`ExportError` naming the file when it is missing,
    truncated, corrupt, a foreign safetensors or torch file, or of another format."""
    path = Path(path)
    if not path.exists():
        raise ExportError(f"export {path} does not exist")
    if path.is_dir():
        raise ExportError(f"export {path} is a directory, not an export file (checkpoint directories need --run)")
    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            n = int.from_bytes(head, "little") if len(head) == 8 else 0
            raw = f.read(n) if 2 <= n <= min(size - 8, _MAX_HEADER) else b""
    except OSError as e:
        raise ExportError(f"export {path} cannot be read ({type(e).__name__}: {e})") from None
    if not raw.startswith(b"{") and (head[:2] == b"PK" or head[:1] == b"\x80"):  # a zip (torch.save) or a pickle
        raise ExportError(f"{path} is a torch file (a checkpoint, or an {EXPORT_FORMAT[:-1]}1 .pt export), not a "
                          f"{EXPORT_SUFFIX} export: load it with its run directory, or export the run again")
    if not raw:
        raise _corrupt(path, f"no safetensors header: {size} bytes, header length {n}")
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise _corrupt(path, f"unreadable safetensors header: {type(e).__name__}") from None
    if not isinstance(header, dict):
        raise _corrupt(path, "the safetensors header is not a JSON object")
    meta = header.pop("__metadata__", None) or {}
    fmt = meta.get("format") if isinstance(meta, dict) else None
    if fmt != EXPORT_FORMAT:
        if isinstance(fmt, str) and fmt.startswith("ntm-export-"):
            raise ExportError(f"export {path} has format {fmt!r}; this ntm reads {EXPORT_FORMAT!r}")
        raise ExportError(f"{path} is a safetensors file but not an ntm export (its metadata has no format "
                          f"{EXPORT_FORMAT!r})")
    try:
        payload = json.loads(meta["ntm"])
        ends = [int(entry["data_offsets"][1]) for entry in header.values()]
        step, weights, config = int(payload["step"]), payload["weights"], payload["config"]
        for key in ("dims", "data", "sha256"):
            payload[key]  # noqa: B018 - presence
    except (KeyError, TypeError, ValueError, IndexError) as e:
        raise _corrupt(path, f"incomplete ntm metadata: {type(e).__name__}: {e}") from None
    expected = 8 + n + max(ends, default=0)
    if expected != size:
        raise ExportError(f"export {path} is truncated or has bytes appended: its header describes {expected} bytes, "
                          f"the file has {size}")
    try:
        exp = Experiment.model_validate(config)
    except pydantic.ValidationError as e:
        problem = config_error(e).problems[0]
        raise ExportError(f"export {path}: its experiment config does not load here ({problem[0]}: {problem[1]}; "
                          "a plugin variant? pass --plugin MODULE)") from None
    return ExportInfo(path, exp, step, "ema" if weights == "ema" else "raw", payload, header)


def _digest(tensors: dict[str, Tensor]) -> str:
    """SHA-256 over the names, dtypes, shapes and bytes of ``tensors`` (sorted by name)."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)};".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def _read_tensors(info: ExportInfo, parts: tuple[str, ...] = PARTS) -> dict[str, dict[str, Tensor]]:
    """``{part: {name: tensor}}`` of the given parts, each checked against its digest."""
    from safetensors import safe_open

    path = info.path
    wanted = {p: [k for k in info.tensors if k.startswith(p + ".")] for p in parts}
    out: dict[str, dict[str, Tensor]] = {}
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            for part, names in wanted.items():
                out[part] = {k[len(part) + 1:]: f.get_tensor(k) for k in names}
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error types; all mean a corrupt file
        first = " ".join(str(e).split())[:160]
        raise _corrupt(path, f"{type(e).__name__}: {first}") from None
    digests = info.payload["sha256"]
    for part, tensors in out.items():
        if tensors or part in digests:
            if digests.get(part) != _digest(tensors):
                raise ExportError(f"export {path} is corrupt: its {part} tensors do not match their SHA-256 digest")
    return out


def export_denoiser(path: str | os.PathLike[str]) -> EmbeddedDenoiserConfig | None:
    """The distilled learned denoiser an export carries (only those tensors are read); ``None`` if it has none."""
    info = read_export(path)
    return _embedded_denoiser(info, _read_tensors(info, ("denoiser",))["denoiser"])


def _embedded_denoiser(info: ExportInfo, tensors: dict[str, Tensor]) -> EmbeddedDenoiserConfig | None:
    meta = info.payload.get("denoiser")
    if not meta:
        return None
    try:
        config = LearnedDenoiserConfig.model_validate(meta["network"])
        net = config.network(ModelDims(**meta["dims"]))
        net.load_state_dict(tensors)
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        first = " ".join(str(e).split())[:160]
        raise ExportError(f"export {info.path}: its denoiser does not load ({type(e).__name__}: {first})") from None
    return EmbeddedDenoiserConfig.of(meta["network"], net.eval())


def _autoencoder(info: ExportInfo, tensors: dict[str, Tensor]) -> Autoencoder:
    meta = info.payload["autoencoder"]
    try:
        config = AUTOENCODERS.get(meta["name"]).config_cls.model_validate(meta["config"])
        model = config.build(tuple(meta["image_shape"]))
        model.load_state_dict(tensors)
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        first = " ".join(str(e).split())[:160]
        raise ExportError(f"export {info.path}: its autoencoder does not load ({type(e).__name__}: {first})") from None
    if model.fingerprint() != meta["fingerprint"]:
        raise ExportError(f"export {info.path}: its autoencoder's fingerprint {model.fingerprint()} is not the recorded "
                          f"{meta['fingerprint']}")
    return model.eval()


def load_export(path: str | os.PathLike[str], weights: str = "ema") -> LoadedRun:
    """A trained model from an export file alone (no run directory, no data): see the module docstring.

    ``weights="raw"`` is refused for an export of EMA weights (an export holds one set; ``"ema"`` accepts either,
    as for checkpoints without an EMA). Every failure is one line naming the file (:class:`ExportError`,
    :class:`~ntm.train.errors.CheckpointError`)."""
    info = read_export(path)
    path = info.path
    if weights == "raw" and info.weights == "ema":
        raise ExportError(f"export {path} holds the EMA weights only; load it with the EMA weights, or export the raw "
                          "ones (ntm export --weights raw)")
    parts = _read_tensors(info)
    p = info.payload
    d = p["data"]
    try:
        spec = DataSpec(shape=tuple(d["image_shape"]), num_classes=int(d["num_classes"]), kind=d["kind"])
        dims = ModelDims(**p["dims"])
    except (KeyError, TypeError, ValueError) as e:
        raise _corrupt(path, f"incomplete data statistics: {type(e).__name__}: {e}") from None
    data: DataSource = ExportedData(path, spec, d)
    if p.get("autoencoder"):
        data = LatentSource(data, _autoencoder(info, parts["autoencoder"]))
    if tuple(data.spec.shape) != tuple(d["shape"]):
        raise ExportError(f"export {path}: its data shape {tuple(d['shape'])} is not what its autoencoder gives "
                          f"({tuple(data.spec.shape)})")
    model = build_model(info.experiment, data, dims)
    load_sampling_weights(model, {"model": parts["model"]}, "raw", path=path)
    denoiser = _embedded_denoiser(info, parts["denoiser"])
    return LoadedRun(info.experiment, data, model.eval(), info.step, info.weights, path, None, denoiser)


@dataclasses.dataclass(frozen=True)
class ExportSummary:
    path: Path
    step: int
    weights: str
    tensors: int
    bytes: int
    parts: tuple[str, ...]
    """The parts written (``model``, and ``autoencoder`` / ``denoiser`` where the run has them)."""
    notes: tuple[str, ...] = ()
    """What the export lacks, one line each (e.g. no class prior: classification then uses a uniform prior)."""


def _distilled(run: LoadedRun) -> EmbeddedDenoiserConfig | None:
    """The distilled learned denoiser to carry: an export's own, the run's config's weights, or ``<run>/denoiser``."""
    if isinstance(run.denoiser, EmbeddedDenoiserConfig):
        return run.denoiser
    if run.is_export:
        return None
    config = run.experiment.denoiser
    where = Path(config.weights) if isinstance(config, LearnedDenoiserConfig) and config.weights else \
        run.source / DENOISER_DIR
    checkpoint = where if where.is_file() or is_checkpoint_dir(where) else \
        CheckpointManager(where / "checkpoints").latest_path()
    if checkpoint is None:
        return None
    network = read_sampling_state(checkpoint, required=("config",))["config"]["network"]
    return EmbeddedDenoiserConfig.of(network, load_distilled(checkpoint))


def _data_info(run: LoadedRun) -> tuple[dict[str, Any], list[str]]:
    data, model = run.data, run.model
    exported = exported_data(data)
    if exported is not None:
        return dict(exported.info), []
    display = display_kind(data)
    if display is None:
        raise ExportError(f"data source '{DATA_SOURCES.name_of(run.experiment.data)}' shows samples through its own "
                          "to_display, which an export cannot carry (it knows images in [-1, 1] and points)")
    spec = data.spec
    stats = json.loads(json.dumps(data.stats(), default=str))
    num_classes = int(model.dims.num_classes)
    notes = []
    prior = None
    if num_classes:
        try:
            prior = class_log_prior(data, num_classes).tolist()
        except (DataError, OSError) as e:
            notes.append(f"no class prior (classification uses a uniform one): {str(e).splitlines()[0]}")
    names = getattr(pixel_images(data), "class_names", None) or stats.get("class_names")
    info = {
        "kind": spec.kind, "shape": list(spec.shape), "image_shape": list(spec.image_shape or spec.shape),
        "num_classes": int(spec.num_classes), "encoded_by": spec.encoded_by, "display": display, "stats": stats,
        "class_names": None if not names else [str(n) for n in names], "log_prior": prior,
    }
    return info, notes


def _autoencoder_info(data: DataSource) -> tuple[dict[str, Any], dict[str, Tensor]] | None:
    if not isinstance(data, LatentSource):
        return None
    ae = data.autoencoder
    for name in AUTOENCODERS.names():
        entry = AUTOENCODERS.get(name)
        config = getattr(ae, "config", None)
        if entry.cls is type(ae) and isinstance(config, entry.config_cls):
            break
    else:
        raise ExportError(f"the run's autoencoder ({type(ae).__name__}) is no registered variant with its config on "
                          "the module (.config): an export cannot rebuild it")
    if "weights" in type(config).model_fields:
        config = config.replace(weights=None)  # the weights travel in the export
    meta = {"name": name, "config": config.model_dump(mode="json"), "image_shape": list(data.image_shape),
            "fingerprint": data.fingerprint}
    return meta, {k: v for k, v in ae.state_dict().items()}


def _check_exportable(run: LoadedRun) -> None:
    encoder = getattr(run.model, "condition_encoder", None)
    if encoder is not None and "_frozen_tower" in vars(encoder) and getattr(encoder, "weights", None) is not None:
        raise ExportError(f"the run's frozen text tower (conditioner.weights {encoder.weights}) is not part of its "
                          "checkpoints, and exporting it is not supported yet")


def write_export(out: str | os.PathLike[str], run: LoadedRun) -> ExportSummary:
    """Write ``run`` (a run's or an export's :class:`LoadedRun`) as one export file at ``out``, atomically: a
    temporary file beside it, fsynced, renamed onto ``out`` (:func:`ntm.atomic.atomic_path`)."""
    from safetensors.torch import save_file

    out = Path(out)
    if out.is_dir():
        raise ExportError(f"export {out} is a directory; name the file to write (e.g. {out / 'model.safetensors'})")
    _check_exportable(run)
    info, notes = _data_info(run)
    parts: dict[str, dict[str, Tensor]] = {"model": dict(run.model.state_dict())}
    meta: dict[str, Any] = {"autoencoder": None, "denoiser": None}
    ae = _autoencoder_info(run.data)
    if ae is not None:
        meta["autoencoder"], parts["autoencoder"] = ae
    distilled = _distilled(run)
    if distilled is not None:
        meta["denoiser"] = {"network": distilled.architecture(), "dims": dataclasses.asdict(distilled.net.dims)}
        parts["denoiser"] = dict(distilled.net.state_dict())
    parts = {p: {k: v.detach().cpu().contiguous().clone() for k, v in t.items()} for p, t in parts.items()}
    payload = {
        "format": EXPORT_FORMAT, "ntm_version": version(), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "step": int(run.step), "weights": run.weights, "source": str(run.checkpoint or run.source),
        "config": run.experiment.model_dump(mode="json"), "dims": dataclasses.asdict(run.model.dims), "data": info,
        **meta, "sha256": {p: _digest(t) for p, t in parts.items()},
    }
    tensors = {f"{p}.{k}": v for p, t in parts.items() for k, v in t.items()}
    with atomic_path(out) as tmp:
        try:
            save_file(tensors, str(tmp), metadata={"format": EXPORT_FORMAT, "ntm": json.dumps(payload)})
        except Exception as e:  # safetensors reports a failed write (a full disk) as its own error with the OS errno
            code = re.search(r"\(os error (\d+)\)", str(e))
            if code is None or isinstance(e, OSError):
                raise
            raise OSError(int(code.group(1)), os.strerror(int(code.group(1))), str(out)) from e
    size = sum(t.numel() * t.element_size() for t in tensors.values())
    return ExportSummary(out, int(run.step), run.weights, len(tensors), size, tuple(parts), tuple(notes))


