"""Cached latents: webdataset shards of an autoencoder's latents, written once and read back as ``latent-shards``.

Writing (the command line is ``ntm shards write --encode``, in :mod:`experiments.cli`)::

    ntm shards write --encode runs/digits-ae --source digits --count 20000 --out 'lat/train-%06d.tar'
    ntm shards write --encode runs/digits-ae --source digits --split eval --out 'lat/eval-%06d.tar'
    ntm shards write --encode runs/shapes-ae --folder images/ --out 'lat/folder-%06d.tar'

:func:`write_latent_shards` takes a source that already yields latents
(``spec.encoded_by`` set: an :class:`ntm.autoencoders.LatentSource` over an
image source; this module never loads an autoencoder itself) and writes, per
example, ``{"__key__", "latent.npy", "cls"?, "txt"?, "json"?}``: the latent
``(c, h, w)`` as float32 ``.npy`` bytes, exactly the values the source gives
(the posterior mean at unit scale, ``autoencoder.encode``), so reading back is
bit-equal to encoding on the fly; and the example's label, caption and
annotation (a caption ``""`` or annotation ``{}``, which stand for "none" in a
batch, is not written; reading gives them back the same way). The training
split takes the first ``count`` examples of the seeded training stream, the
held-out split goes in order (read back in order with ``num_workers=0``; with
workers, the order is fixed but interleaved, as for ``webdataset``). A folder
(:func:`folder_images`) is read at the autoencoder's image size (shorter side
resized, centre crop), every image once, with its class subfolder and a
``.txt`` caption beside it; large folders are better written to PNG shards
first and encoded from ``--source webdataset``.

The sidecar ``latents.json`` in the shards' directory is written last, after
every shard is closed, atomically (a temporary file renamed onto it), and an
existing one is removed before the first shard is opened; so a write that dies
half way leaves no sidecar, and reading refuses the directory::

    {"format": "ntm-latent-shards-1", "autoencoder": FINGERPRINT, "autoencoder_path": ...,
     "latent_shape": [c, h, w], "image_shape": [C, H, W], "num_samples": N, "num_classes": K,
     "class_names": [...], "shards": [{"file": "train-000000.tar", "samples": 1000, "source": {...}}, ...],
     "source": {...}}

``shards`` lists every shard of the directory with its sample count and
origin (``source`` at the top level is the latest write's): writing training
and held-out shards into one directory under two patterns keeps both listed;
rewriting a pattern replaces that pattern's entries. Shards of another
autoencoder (or latent shape) in the same directory are refused before any file
is touched.

Reading is ``latent-shards`` (:class:`LatentShardsSource`): the sidecar next
to the first training shard gives ``spec = DataSpec(latent_shape, num_classes,
kind="images", encoded_by=fingerprint, image_shape=image_shape)``; every local
shard, training or held-out, must be listed in the sidecar of its directory,
and all those sidecars must name the same autoencoder and shapes. The stream is
the ``webdataset`` one (:class:`ntm.data.streaming.ShardStream`: the same rank
and worker split, shuffling, determinism, corrupt samples skipped and counted);
only the sample decoding differs: the declared members are ``latent.npy``,
``cls``, ``txt`` and ``json`` (anything else in a shard is dropped undecoded,
with one warning per shard), no image decoder runs, and ``latent.npy`` is read
as a ``.npy`` array only (``numpy.lib.format.read_array`` with
``allow_pickle=False``: an object array, a pickle or an ``.npz`` is a corrupt
sample, skipped and counted, never unpickled). Batches hold unit-scale
latents, not images in ``[-1, 1]``, so this source cannot show them: a run wraps it in
``LatentSource`` (``autoencoder:pretrained --autoencoder.path RUN``, see
``experiments.build.data_for``), which checks the fingerprint and decodes;
``to_display`` of the bare source raises :class:`DataError`.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import json
import random
import re
from pathlib import Path
from typing import Any, Callable, Iterator, Literal

import numpy as np
import pydantic
import torch
from torch import Tensor

from ntm.atomic import atomic_write_text
from ntm.data.base import DATA_SOURCES, Batch, ComponentConfig, DataError, DataSource, DataSpec
from ntm.data.folder import load_image, scan_image_folder, uint8_to_unit
from ntm.data.streaming import CONDITION_KEYS, ShardStream, conditions, expand_urls, is_local
from ntm.data.streams import InMemorySource

FORMAT = "ntm-latent-shards-1"
SIDECAR = "latents.json"
LATENT_KEY = "latent.npy"
"""The sample entry holding the latent (a tar member ``KEY.latent.npy``)."""


# -- the sidecar ------------------------------------------------------------------


def _bad_sidecar(file: Path, reason: str) -> DataError:
    return DataError(f"latent-shards: {file} {reason}: not latent shards or an incomplete write (ntm shards write "
                     "--encode writes it last)")


def read_sidecar(file: str | Path) -> dict[str, Any]:
    """The validated ``latents.json`` at ``file``; :class:`DataError` naming it when missing or invalid."""
    file = Path(file).expanduser()
    if not file.is_file():
        raise _bad_sidecar(file, "is missing")
    try:
        meta = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise _bad_sidecar(file, f"does not read as JSON ({' '.join(str(e).split())[:120]})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise _bad_sidecar(file, f"is not a {FORMAT} sidecar")

    def shape(key: str) -> bool:
        value = meta.get(key)
        return isinstance(value, list) and len(value) == 3 and all(isinstance(v, int) and v >= 1 for v in value)

    problems = [k for k, ok in (
        ("autoencoder", isinstance(meta.get("autoencoder"), str) and bool(meta.get("autoencoder"))),
        ("latent_shape", shape("latent_shape")), ("image_shape", shape("image_shape")),
        ("num_classes", isinstance(meta.get("num_classes"), int) and meta["num_classes"] >= 0),
        ("shards", isinstance(meta.get("shards"), list) and all(
            isinstance(e, dict) and isinstance(e.get("file"), str) for e in meta["shards"])),
    ) if not ok]
    if problems:
        raise _bad_sidecar(file, f"has no valid {', '.join(problems)}")
    return meta


def _write_json_atomically(file: Path, data: dict) -> None:
    """``file`` appears complete or not at all (:func:`ntm.atomic.atomic_write`)."""
    atomic_write_text(file, _format(data))


def _format(data: dict) -> str:
    """JSON with one top-level key per line and one line per shard entry."""
    lines = []
    for key, value in data.items():
        if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            inner = ",\n".join(f"  {json.dumps(v)}" for v in value)
            lines.append(f" {json.dumps(key)}: [\n{inner}\n ]")
        else:
            lines.append(f" {json.dumps(key)}: {json.dumps(value)}")
    return "{\n" + ",\n".join(lines) + "\n}\n"


def _pattern_regex(name: str) -> re.Pattern[str]:
    """A shard file-name pattern (``train-%06d.tar``) -> a regex matching the names it produces."""
    parts = re.split(r"%0?\d*d", name)
    return re.compile(r"\d+".join(re.escape(p) for p in parts))


# -- writing -------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LatentShardSummary:
    shards: tuple[str, ...]
    """Paths of the shards written, in order."""
    num_samples: int
    """Latents written."""
    class_names: tuple[str, ...]
    """Class index -> name (empty when unconditional)."""
    num_captions: int
    """Samples that carry a ``txt`` caption."""
    num_annotations: int
    """Samples that carry a ``json`` annotation."""
    latent_shape: tuple[int, ...]
    autoencoder: str
    """Fingerprint of the autoencoder that encoded them."""
    sidecar: str
    """Path of ``latents.json``."""


def npy_bytes(latent: Tensor) -> bytes:
    """One latent ``(c, h, w)`` -> float32 ``.npy`` bytes."""
    out = io.BytesIO()
    np.save(out, latent.detach().to("cpu", torch.float32).contiguous().numpy(), allow_pickle=False)
    return out.getvalue()


def write_latent_shards(
    source: DataSource, out_pattern: str, count: int | None = None, maxcount: int = 1000, *,
    split: Literal["train", "eval"] = "train", seed: int = 0, batch_size: int = 256,
    autoencoder_path: str | None = None, origin: dict[str, Any] | None = None,
    class_names: tuple[str, ...] | None = None,
) -> LatentShardSummary:
    """Write ``count`` latents of ``source`` to tar shards named by ``out_pattern``, then ``latents.json``.

    ``source`` yields latents (``spec.encoded_by`` and ``spec.image_shape`` set; normally an
    ``ntm.autoencoders.LatentSource``). ``split="train"``: the first ``count`` examples of its training stream
    with ``seed``; ``split="eval"``: its held-out split in order, all of it when ``count`` is ``None``. At most
    ``maxcount`` samples per shard. ``origin`` (JSON) records where the examples came from, ``class_names`` the
    class names (default: the image source's ``class_names``, else the indices). Every check (arguments, the
    source, the first batch, an existing sidecar of another autoencoder) runs before the first file is created.
    See the module docstring for the layout.
    """
    from ntm.data.shards import ShardSink, _check_output

    _check_output(out_pattern, maxcount)
    if count is not None and count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    if split not in ("train", "eval"):
        raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
    spec = source.spec
    fingerprint = getattr(spec, "encoded_by", None)
    if not fingerprint or spec.image_shape is None or len(spec.shape) != 3:
        raise DataError(f"write_latent_shards: the source yields {spec.kind} of shape {tuple(spec.shape)}, not "
                        "latents of an autoencoder (wrap the image source in ntm.autoencoders.LatentSource)")
    if split == "train":
        if count is None:
            raise ValueError("count is required for the training split (its stream is endless)")
        batches: Iterator[Batch] = source.train_batches(min(count, batch_size), seed=seed)
    else:
        batches = source.eval_batches(batch_size, max_examples=count)
    first = next(batches, None)  # encodes the first batch: a failure here leaves no file behind
    if first is None:
        raise DataError("write_latent_shards: the source has no held-out examples to write")
    if class_names is None:
        images = getattr(source, "pixel_source", None) or source
        class_names = tuple(getattr(images, "class_names", ()) or ())
    class_names = tuple(class_names) or tuple(str(i) for i in range(spec.num_classes))
    origin = {"split": split, **(origin or {})}

    out_dir = Path(out_pattern % 0).parent
    sidecar = out_dir / SIDECAR
    meta = {"format": FORMAT, "autoencoder": fingerprint, "autoencoder_path": autoencoder_path,
            "latent_shape": list(spec.shape), "image_shape": list(spec.image_shape),
            "num_classes": spec.num_classes, "class_names": list(class_names)}
    kept = _kept_entries(sidecar, meta, _pattern_regex(Path(out_pattern).name))

    out_dir.mkdir(parents=True, exist_ok=True)
    sidecar.unlink(missing_ok=True)  # from here until the end the directory reads as an incomplete write
    written = captions = annotations = 0
    entries: list[dict[str, Any]] = []
    shards: list[str] = []

    def closed(fname: str) -> None:
        shards.append(str(fname))
        entries.append({"file": Path(fname).name, "samples": sink.count, "source": origin})

    with ShardSink(out_pattern, maxcount, post=closed) as sink:
        for batch in _chain(first, batches):
            for j in range(batch.x.shape[0]):
                if written == count:
                    break
                sample: dict[str, object] = {"__key__": f"{written:08d}", LATENT_KEY: npy_bytes(batch.x[j])}
                if batch.label is not None:
                    sample["cls"] = int(batch.label[j])
                if batch.caption is not None and batch.caption[j]:  # "" stands for none in a mixed batch
                    sample["txt"] = batch.caption[j]
                    captions += 1
                if batch.annotation is not None and batch.annotation[j]:  # {} likewise
                    sample["json"] = json.dumps(batch.annotation[j]).encode()
                    annotations += 1
                sink.write(sample)
                written += 1
            if written == count:
                break
    names = {e["file"] for e in entries}
    listing = [e for e in kept if e["file"] not in names] + entries
    meta.update(num_samples=sum(int(e.get("samples", 0)) for e in listing), shards=listing, source=origin)
    _write_json_atomically(sidecar, meta)
    return LatentShardSummary(tuple(shards), written, class_names, captions, annotations, tuple(spec.shape),
                              fingerprint, str(sidecar))


def _chain(first: Batch, rest: Iterator[Batch]) -> Iterator[Batch]:
    yield first
    yield from rest


def _kept_entries(sidecar: Path, meta: dict[str, Any], pattern: re.Pattern[str]) -> list[dict[str, Any]]:
    """Entries of an existing sidecar that this write keeps: other patterns' shards that still exist. They must
    be latents of the same autoencoder and shapes; an invalid old sidecar is simply replaced."""
    try:
        old = read_sidecar(sidecar)
    except DataError:
        return []
    others = [e for e in old["shards"] if not pattern.fullmatch(e["file"]) and (sidecar.parent / e["file"]).is_file()]
    if not others:
        return []
    for key in ("autoencoder", "latent_shape", "image_shape"):
        if old[key] != meta[key]:
            raise DataError(f"write_latent_shards: {sidecar} lists {others[0]['file']} with {key} {old[key]}, but "
                            f"this write has {meta[key]}; write to another directory (or delete those shards and "
                            f"{SIDECAR})")
    meta["num_classes"] = max(meta["num_classes"], old["num_classes"])
    if len(old.get("class_names") or []) > len(meta["class_names"]):
        meta["class_names"] = list(old["class_names"])
    return others


# -- folders ----------------------------------------------------------------------


class FolderImages(InMemorySource):
    """Every image of a folder once, at ``image_shape``, for encoding: the held-out split is the whole folder in
    a fixed order (shuffled by ``seed``, sorted when ``None``) with labels and ``.txt`` captions; the training
    stream (used only to fit latent statistics) draws from the same images."""

    def __init__(self, folder: str | Path, image_shape: tuple[int, ...], *, seed: int | None = 0) -> None:
        shape = tuple(int(s) for s in image_shape)
        if len(shape) != 3 or shape[0] not in (1, 3) or shape[1] != shape[2]:
            raise DataError(f"folder images are read as square 1- or 3-channel images, but the autoencoder takes "
                            f"images of shape {shape}")
        channels, size = shape[0], shape[1]
        root = Path(folder).expanduser()
        listing = scan_image_folder(root, who="ntm shards write")
        order = list(range(len(listing.files)))
        if seed is not None:
            random.Random(seed).shuffle(order)
        files = [listing.files[i] for i in order]
        images = torch.stack([load_image(f, size, channels, who="ntm shards write") for f in files])
        labels = None if listing.labels is None else torch.tensor([listing.labels[i] for i in order], dtype=torch.long)
        self.captions = [f.with_suffix(".txt").read_text(encoding="utf-8").strip()
                         if f.with_suffix(".txt").is_file() else None for f in files]
        self.files = tuple(files)
        self.class_names = listing.class_names
        self.spec = DataSpec(shape=shape, num_classes=len(listing.class_names), kind="images")
        self._set_splits(images, labels, images, labels)

    def normalise(self, raw: Tensor) -> Tensor:
        return uint8_to_unit(raw)

    def eval_batches(self, batch_size: int, *, max_examples: int | None = None) -> Iterator[Batch]:
        start = 0
        for batch in super().eval_batches(batch_size, max_examples=max_examples):
            captions = self.captions[start:start + batch.x.shape[0]]
            start += batch.x.shape[0]
            if any(c is not None for c in captions):
                batch = dataclasses.replace(batch, caption=[c or "" for c in captions])
            yield batch

    def to_display(self, x: Tensor) -> Tensor:
        return ((x + 1) / 2).clamp(0, 1)


def folder_images(folder: str | Path, image_shape: tuple[int, ...], *, seed: int | None = 0) -> FolderImages:
    """The images under ``folder`` read at ``image_shape`` (see :class:`FolderImages`); :class:`DataError` for a
    missing or empty folder, an unreadable image, or a shape folder images cannot take."""
    return FolderImages(folder, image_shape, seed=seed)


# -- reading --------------------------------------------------------------------------


def _latent_example(sample: dict, shape: tuple[int, ...], num_classes: int) -> dict:
    """Raw wds sample -> ``{"x": (c, h, w) float32, "label", "caption", "annotation"}``."""
    raw = sample.get(LATENT_KEY)
    if raw is None:
        raise DataError(f"sample {sample.get('__key__')!r} has no {LATENT_KEY}")
    array = np.lib.format.read_array(io.BytesIO(raw), allow_pickle=False)  # .npy only; never a pickle
    if array.dtype != np.float32 or tuple(array.shape) != shape:
        raise DataError(f"sample {sample.get('__key__')!r}: {LATENT_KEY} is {array.dtype} {tuple(array.shape)}, "
                        f"expected float32 {shape}")
    return {"x": torch.from_numpy(array.copy()), **conditions(sample, num_classes)}


class LatentShardsConfig(ComponentConfig):
    urls: str
    """Training latent shards: a path, a brace pattern (``lat/train-{000000..000009}.tar``) or ``a::b`` list; the
    sidecar latents.json is read next to the first."""
    eval_urls: str | None = None
    """Held-out latent shards (same forms as ``urls``); none: evaluation yields no batches."""
    num_classes: int | None = pydantic.Field(None, ge=0)
    """Number of classes in the samples' ``cls`` entries (default: the sidecar's; 0: unconditional)."""
    num_workers: int = pydantic.Field(0, ge=0)
    """DataLoader worker processes reading shards (0: read in the training process)."""
    shuffle_buffer: int = pydantic.Field(1000, ge=0)
    """Per-worker sample shuffle buffer (0 or 1: shard order only)."""

    def build(self) -> LatentShardsSource:
        return LatentShardsSource(self)


@DATA_SOURCES.register("latent-shards", LatentShardsConfig)
class LatentShardsSource(ShardStream):
    """Batches of unit-scale latents ``x (B, *latent_shape)`` float32 from cached shards (module docstring).

    ``label``, ``caption`` and ``annotation`` as for ``webdataset``; ``spec.encoded_by`` names the autoencoder
    that wrote them and ``spec.image_shape`` the images they decode to. ``meta`` is the sidecar.
    """

    who = "latent-shards"
    members = frozenset((LATENT_KEY, *CONDITION_KEYS))  # raw bytes: none is ever read through pickle

    def __init__(self, config: LatentShardsConfig) -> None:
        self.config = config
        self.urls = expand_urls(config.urls, self.who)
        self.eval_urls = None if config.eval_urls is None else expand_urls(config.eval_urls, self.who,
                                                                             "data.eval_urls")
        if not is_local(self.urls[0]):
            raise DataError(f"latent-shards: the first training shard {self.urls[0]} is not a local file; "
                            f"{SIDECAR} is read next to it")
        self.sidecar = Path(self.urls[0]).expanduser().parent / SIDECAR
        self.meta = read_sidecar(self.sidecar)
        self._check_listed(self.urls + (self.eval_urls or []))
        num_classes = self.meta["num_classes"] if config.num_classes is None else config.num_classes
        self.class_names = tuple(self.meta.get("class_names") or ())
        self.spec = DataSpec(shape=tuple(self.meta["latent_shape"]), num_classes=num_classes, kind="images",
                             encoded_by=self.meta["autoencoder"], image_shape=tuple(self.meta["image_shape"]))
        self.skipped = 0
        self.skip_messages: list[str] = []
        self.ignored_members: dict[str, list[str]] = {}
        self._autoencoder = None

    def _check_listed(self, urls: list[str]) -> None:
        """Every local shard is listed in its directory's sidecar, and those sidecars agree with the first."""
        sidecars: dict[Path, dict[str, Any]] = {self.sidecar: self.meta}
        for url in urls:
            if not is_local(url):
                continue
            path = Path(url).expanduser()
            file = path.parent / SIDECAR
            if file not in sidecars:
                sidecars[file] = meta = read_sidecar(file)
                for key in ("autoencoder", "latent_shape", "image_shape"):
                    if meta[key] != self.meta[key]:
                        raise DataError(f"latent-shards: {file} has {key} {meta[key]} but {self.sidecar} has "
                                        f"{self.meta[key]}: training and held-out latents of different autoencoders")
            if path.name not in {e["file"] for e in sidecars[file]["shards"]}:
                raise DataError(f"latent-shards: {url} is not listed in {file}: not latent shards, or left over from "
                                "an earlier write; write them again (ntm shards write --encode)")

    def _example_fn(self) -> Callable[[dict], dict]:
        return functools.partial(_latent_example, shape=tuple(self.spec.shape), num_classes=self.spec.num_classes)

    def stats(self) -> dict:
        return {"latents": "unit scale (autoencoder.encode, posterior mean)", "autoencoder": self.meta["autoencoder"],
                "latent_shape": list(self.spec.shape), "image_shape": list(self.spec.image_shape or ()),
                "skipped": self.skipped}

    def to_display(self, x: Tensor) -> Tensor:
        """Latents -> images ``(B, *image_shape)`` in ``[0, 1]``, decoded by the autoencoder that wrote them (the file
        the sidecar names, loaded on first use and checked against the fingerprint). A run decodes through its own
        autoencoder (:class:`ntm.autoencoders.LatentSource`); this is for looking at shards on their own."""
        if self._autoencoder is None:
            from ntm.autoencoders.files import load_autoencoder  # the one use of the autoencoders by the data layer

            path, fingerprint = self.meta.get("autoencoder_path"), self.meta["autoencoder"]
            try:
                model, _ = load_autoencoder(path, self.spec.image_shape)
            except (TypeError, ValueError) as e:
                raise DataError(f"latent-shards: latents of autoencoder {fingerprint} cannot be shown without it "
                                f"({e}); give the run autoencoder:pretrained --autoencoder.path") from None
            if model.fingerprint() != fingerprint:
                raise DataError(f"latent-shards: {path} is autoencoder {model.fingerprint()} now, but the shards were "
                                f"written by {fingerprint}; give the run the autoencoder that wrote them")
            self._autoencoder = model.eval()
        with torch.no_grad():
            return ((self._autoencoder.decode(x.float()) + 1) / 2).clamp(0, 1)


__all__ = [
    "FORMAT", "FolderImages", "LATENT_KEY", "LatentShardSummary", "LatentShardsConfig", "LatentShardsSource",
    "SIDECAR", "folder_images", "npy_bytes", "read_sidecar", "write_latent_shards",
]
