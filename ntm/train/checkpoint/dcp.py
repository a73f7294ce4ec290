"""Sharded training checkpoints: one directory per step, written by ``torch.distributed.checkpoint`` (DCP).

Layout of ``checkpoints/step_<08d>/``:

- ``__<rank>_0.distcp``: one file per rank holding that rank's entries. Under FSDP2 these are its own shards
  of the weights, the AdamW moments and the EMA, written in parallel without gathering: each rank writes
  about ``1/world_size`` of the bytes. Entries every rank holds alike (buffers, AdamW's step counts, the
  schedule) are written once.
- ``.metadata``: DCP's index (every entry's global shape, dtype and file range), written by rank 0 once
  every rank's writes have returned. DCP pickles it; it is read back by a restricted unpickler that admits only
  DCP's own index classes, torch sizes, dtypes and layouts, paths and plain containers
  (:data:`_METADATA_CLASSES`), so a ``.metadata`` from someone else cannot run code: a pickle that names anything
  else (``os.system``, a class of another module) is refused in one line before it is loaded. (A digest written
  at save time would not help: whoever shares the directory writes the digest too.)
- ``meta.json``: ``{"format", "step", "world_size", "parallel", "config", "files", ...}``, written last.
  ``files`` maps every other file of the directory to its SHA-256, hashed by rank 0 when it commits the save;
  every reader checks them first (:func:`verify_files`), so a flipped byte or a zero-filled shard makes the
  directory unloadable (and resuming falls back to the previous checkpoint) instead of loading damaged weights.
  The checksums guard against damage, not against someone who rewrites meta.json too: what keeps a
  directory from someone else from running code is the restricted unpickler below.

The entries (DCP flattens nested dicts, joining keys with ``.``):

- ``model``, ``optimizer``: :func:`torch.distributed.checkpoint.state_dict.get_state_dict` of the model and
  AdamW: keyed by parameter name, sharded like the parameters (plain tensors in one process);
- ``ema``: :meth:`ntm.train.ema.EMA.state_dict` as it is (its shadow holds DTensors under FSDP2);
- ``scheduler``: the learning-rate schedule's state dict;
- ``local/rank<r>``: what belongs to rank ``r`` alone: its RNG states (:func:`~ntm.train.checkpoint.rng.rng_state`)
  and its data position ``{"step", "rank", "world_size"}``. Every rank writes its own.

**Visible only once complete.** Rank 0 makes ``step_<08d>.tmp-dcp/``, every rank writes into it, and after
DCP's collective finish rank 0 writes ``meta.json`` (fsynced) and renames the directory to ``step_<08d>``.
A directory under a final name is complete; a save that dies on any rank leaves only the temporary
directory, which :class:`~ntm.train.checkpoint.base.CheckpointDirectory` ignores and deletes at the next commit.

**Asynchronous saves** (``train.async_checkpoint``): ``dcp.async_save`` copies the state to host memory
(training goes on changing the weights) and writes it from a background thread, over a gloo process group
of its own. At most one save is in flight: the next save, a non-finite loss and the end of the run wait for
it. Rank 0 commits a finished save at the next step (:meth:`ShardedCheckpointer.poll`).

**Host memory.** A synchronous save writes from the training state itself: nothing is gathered and a save adds
a few MiB (measured on CPU, 2 gloo ranks, 25 M parameters, 192 MiB of state per rank: 0.03x a rank's shard).
An async save holds one host copy of the rank's shards until written (1.0x; DCP's default staging copied a
DTensor's storage twice, 2.2-2.6x). The file format gathers everything on rank 0 (2x its shard at 2 ranks).

**Resharding.** Loading builds the state this run holds (its own shards under its own world size) and DCP
reads, on each rank, the byte ranges those shards need, so a checkpoint written by ``N`` ranks resumes at
``M`` (1 included). The noise of micro-batch ``chunk = rank * grad_accum + micro`` is keyed by
``(seed, step, chunk)`` and the data source is handed the start step, so the loss curve continues when
``world_size x grad_accum`` stays the same (``train.grad_accum`` may change on resume). Rank ``r`` restores
rank ``r``'s RNG states when the checkpoint has them; ranks beyond the saved world size keep their seeded
states (the training step draws its randomness from the keyed generators, not the global ones).

One process uses the same format (DCP without a process group), so 1 -> N and N -> 1 work alike.
Non-tensor entries (the schedule, each rank's RNG states) are stored as ``torch.save`` bytes and read with
``torch.load(weights_only=True)``, as checkpoint files are.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import itertools
import json
import pickle
import warnings
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from ntm.atomic import PathLike
from ntm.train.checkpoint.base import META_FILE, CheckpointDirectory, first_line
from ntm.train.checkpoint.rng import rng_state, set_rng_state
from ntm.train.errors import CheckpointError

FORMAT = "ntm-dcp-1"
"""``meta.json``'s ``format``; readers accept ``ntm-dcp-<n>`` up to this version."""
FORMAT_VERSION = 1
LOCAL_PREFIX = "local/rank"


def local_key(rank: int) -> str:
    """The entry of rank ``rank``'s own state (RNG, data position)."""
    return f"{LOCAL_PREFIX}{rank}"


def _blob(obj: Any) -> bytes:
    """``obj`` as one opaque DCP entry: its ``torch.save`` bytes (DCP keeps every leaf of a nested dict as an
    entry of its own, and drops empty containers; a blob comes back exactly)."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _unblob(value: Any, weights_only: bool = True) -> Any:
    """What :func:`_blob` stored (other values pass through)."""
    return torch.load(io.BytesIO(value), weights_only=weights_only) if isinstance(value, bytes) else value


_NO_PG_NOTE = ".*torch.distributed is (disabled|unavailable).*"
"""DCP's note that it runs without a process group: one process is a supported case here."""


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence :data:`_NO_PG_NOTE` in this thread."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_NO_PG_NOTE)
        yield


def _planner(weights_only: bool = True):
    """DCP's default load planner, reading non-tensor entries with ``torch.load(weights_only=...)``."""
    from torch.distributed.checkpoint import DefaultLoadPlanner

    class Planner(DefaultLoadPlanner):
        def load_bytes(self, read_item: Any, value: io.BytesIO) -> None:
            if weights_only:  # refuse anything but plain containers and tensors, then hand DCP a vetted copy
                vetted = io.BytesIO()
                torch.save(torch.load(value, weights_only=True), vetted)
                vetted.seek(0)
                value = vetted
            super().load_bytes(read_item, value)

    return Planner()


def _errors() -> tuple[type[BaseException], ...]:
    """What DCP raises: ordinary exceptions, and its ``CheckpointException`` (a ``BaseException``) that collects
    every rank's."""
    from torch.distributed.checkpoint.api import CheckpointException

    return (Exception, CheckpointException)


def _cause(err: BaseException) -> BaseException:
    """The first rank's exception inside a DCP ``CheckpointException``; others as they are."""
    failures = getattr(err, "failures", None)
    if isinstance(failures, dict) and failures:
        first = failures[min(failures)]
        return first[0] if isinstance(first, tuple) else first
    return err


def _read_error(path: Path, err: BaseException) -> CheckpointError:
    """One line for an exception raised while reading checkpoint directory ``path``."""
    err = _cause(err)
    if "Unsupported global" in str(err) or "Weights only load failed" in str(err):
        return CheckpointError(f"checkpoint {path} holds objects other than tensors and plain containers "
                               f"({first_line(err)}); refused")
    return CheckpointError(f"checkpoint {path} cannot be read ({first_line(err)})")


# -- meta.json and completeness -----------------------------------------------------
def read_meta(path: PathLike) -> dict[str, Any]:
    """``meta.json`` of checkpoint directory ``path``; one-line :class:`CheckpointError` naming it otherwise."""
    path = Path(path)
    file = path / META_FILE
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if not file.is_file():
        raise CheckpointError(f"checkpoint {path} has no {META_FILE}: not a checkpoint, or a save that did not complete")
    try:
        meta = json.loads(file.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"checkpoint {path}: {META_FILE} cannot be read ({first_line(e)})") from None
    fmt = meta.get("format") if isinstance(meta, dict) else None
    if not (isinstance(fmt, str) and fmt.startswith("ntm-dcp-") and fmt[8:].isdigit()):
        raise CheckpointError(f"checkpoint {path} is not an ntm checkpoint ({META_FILE} has format {fmt!r})")
    if int(fmt[8:]) > FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {path} has format {fmt}; this ntm reads up to {FORMAT}")
    if not isinstance(meta.get("step"), int) or not isinstance(meta.get("config"), dict):
        raise CheckpointError(f"checkpoint {path}: {META_FILE} lacks its step or config")
    return meta


def _sha256(file: Path) -> str:
    with open(file, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def file_digests(path: PathLike) -> dict[str, dict[str, Any]]:
    """``{name: {"bytes", "sha256"}}`` of every file in checkpoint directory ``path`` but ``meta.json`` (sorted)."""
    return {file.name: {"bytes": file.stat().st_size, "sha256": _sha256(file)}
            for file in sorted(Path(path).iterdir()) if file.is_file() and file.name != META_FILE}


def verify_files(path: PathLike, meta: Mapping[str, Any] | None = None) -> None:
    """Check the files of checkpoint directory ``path`` against the checksums in its ``meta.json``; one-line
    :class:`CheckpointError` naming the first file that is missing or differs. Directories written before the
    checksums (no ``files`` entry) pass unchecked."""
    path = Path(path)
    meta = read_meta(path) if meta is None else meta
    expected = meta.get("files")
    if expected is None:
        return
    if not isinstance(expected, dict):
        raise CheckpointError(f"checkpoint {path}: {META_FILE}'s files entry is not a mapping")
    for name, want in expected.items():
        file = path / str(name)
        if not isinstance(want, dict) or Path(str(name)).name != name:
            raise CheckpointError(f"checkpoint {path}: {META_FILE}'s files entry {name!r} is malformed")
        if not file.is_file():
            raise CheckpointError(f"checkpoint {path} is partial: {name} is missing")
        if file.stat().st_size < want.get("bytes", 0):
            raise CheckpointError(f"checkpoint {path} is partial: {name} is truncated")
        if file.stat().st_size != want.get("bytes") or _sha256(file) != want.get("sha256"):
            raise CheckpointError(f"checkpoint {path}: {name} fails its checksum (damaged on disk or in transfer)")


_METADATA_CLASSES = {
    "torch.distributed.checkpoint.metadata": {"Metadata", "MetadataIndex", "BytesStorageMetadata",
                                              "ChunkStorageMetadata", "StorageMeta", "TensorProperties",
                                              "TensorStorageMetadata", "_MEM_FORMAT_ENCODING"},
    "torch.distributed.checkpoint.filesystem": {"_StorageInfo"},
    "torch.serialization": {"_get_layout"},
    "torch": {"Size"},
    "pathlib": {"Path", "PosixPath", "WindowsPath", "PurePath", "PurePosixPath", "PureWindowsPath"},
    "collections": {"OrderedDict"},
    "builtins": {"set", "frozenset", "slice"},
}
"""What a DCP ``.metadata`` pickle may name: DCP's own index classes, torch's sizes, dtypes and layouts, paths and
plain containers. Anything else (a function to call, a class of another module) is refused before it is loaded,
so reading a checkpoint never runs code from it."""


class _MetadataUnpickler(pickle.Unpickler):
    """``pickle`` restricted to :data:`_METADATA_CLASSES` (and ``torch.<dtype>``)."""

    def find_class(self, module: str, name: str) -> Any:
        if name in _METADATA_CLASSES.get(module, ()) or (
                module == "torch" and isinstance(getattr(torch, name, None), torch.dtype)):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"it names {module}.{name}, which a checkpoint index never holds "
                                     "(refused: loading a checkpoint never runs code from it)")


def _reader(path: PathLike):
    """DCP's file-system reader of ``path`` with its ``.metadata`` read by :class:`_MetadataUnpickler`."""
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import StorageMeta

    class SafeReader(FileSystemReader):
        def read_metadata(self, *args: Any, **kwargs: Any):
            with self.fs.create_stream(self._get_metadata_path(kwargs.get("rank")), "rb") as f:
                metadata = _MetadataUnpickler(f).load()
            if getattr(metadata, "storage_meta", None) is None:
                metadata.storage_meta = StorageMeta()
            metadata.storage_meta.load_id = self.load_id
            return metadata

    return SafeReader(path)


def read_metadata(path: PathLike) -> Any:
    """DCP's index of ``path``, after checking that every file it points into is there and long enough."""
    path = Path(path)
    read_meta(path)
    try:
        metadata = _reader(path).read_metadata()
    except Exception as e:  # noqa: BLE001 - missing, truncated or foreign: one line whatever it is
        raise CheckpointError(f"checkpoint {path}: its .metadata cannot be read ({first_line(e)})") from None
    ends: dict[str, int] = {}
    for info in (getattr(metadata, "storage_data", None) or {}).values():
        name = getattr(info, "relative_path", None)
        if name is not None:
            ends[name] = max(ends.get(name, 0), int(info.offset) + int(info.length))
    for name, end in sorted(ends.items()):
        file = path / name
        if not file.is_file():
            raise CheckpointError(f"checkpoint {path} is partial: {name} is missing")
        if file.stat().st_size < end:
            raise CheckpointError(f"checkpoint {path} is partial: {name} is truncated "
                                  f"({file.stat().st_size} of at least {end} bytes)")
    return metadata


def _top(metadata: Any, key: str) -> str:
    path = (metadata.planner_data or {}).get(key)
    return str(path[0]) if path else key.split(".", 1)[0]


def checkpoint_parts(path: PathLike) -> set[str]:
    """The top-level entries of checkpoint directory ``path`` (e.g. ``{"model", "ema", ...}``)."""
    metadata = read_metadata(path)
    return {_top(metadata, k) for k in metadata.state_dict_metadata}


# -- reading into one process ---------------------------------------------------------
def _set(root: dict, path: tuple, value: Any) -> None:
    """``root[path[0]][path[1]]... = value``, making dicts (str keys) and lists (int keys) on the way."""
    node: Any = root
    for key, nxt in itertools.pairwise(path):
        empty: Any = [] if isinstance(nxt, int) else {}
        if isinstance(node, list):
            while len(node) <= key:
                node.append(None)
            if node[key] is None:
                node[key] = empty
            node = node[key]
        else:
            node = node.setdefault(key, empty)
    last = path[-1]
    if isinstance(node, list):
        while len(node) <= last:
            node.append(None)
    node[last] = value


def read_checkpoint_dir(
    path: PathLike, parts: Iterable[str] | None = None, *, required: Iterable[str] = (), weights_only: bool = True
) -> dict[str, Any]:
    """Checkpoint directory ``path`` read into this process as plain CPU tensors and containers.

    The result has the layout of a checkpoint file's state: ``format``, ``step``, ``config``, then
    ``model``, ``optimizer``, ``ema``, ``scheduler`` and ``rng`` (rank 0's) as far as ``parts`` asks
    (``None``: all; ``()``: none, only the entries of ``meta.json``). Full tensors whatever world size
    wrote them; nothing is collective, so any one rank may call it. ``required`` names top-level keys
    the checkpoint must hold (loaded or not). Raises :class:`CheckpointError` (one line, naming the
    directory) when it is partial, foreign, or lacks a required key.
    """
    from torch.distributed.checkpoint import load
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    path = Path(path)
    meta = read_meta(path)
    verify_files(path, meta)
    metadata = read_metadata(path)
    present = {_top(metadata, k) for k in metadata.state_dict_metadata}
    available = {"format", "step", "config", *present} | ({"rng"} if local_key(0) in present else set())
    missing = [k for k in required if k not in available]
    if missing:
        raise CheckpointError(f"checkpoint {path} is missing required keys: {', '.join(missing)}")
    wanted = set(available if parts is None else parts)
    template: dict[str, Any] = {}
    for key, md in metadata.state_dict_metadata.items():
        top = _top(metadata, key)
        if not (top in wanted or (top == local_key(0) and "rng" in wanted)):
            continue
        value = torch.empty(md.size, dtype=md.properties.dtype) if isinstance(md, TensorStorageMetadata) else None
        _set(template, tuple((metadata.planner_data or {}).get(key, (key,))), value)
    state: dict[str, Any] = {"format": meta["format"], "step": meta["step"], "config": meta["config"]}
    if isinstance(meta.get("extra"), dict):
        state.update({k: v for k, v in meta["extra"].items() if k not in state})
    try:
        if template:
            with _quiet():
                load(template, storage_reader=_reader(path), planner=_planner(weights_only), no_dist=True)
        local = _unblob(template.pop(local_key(0), None), weights_only)
        state.update({k: _unblob(v, weights_only) for k, v in template.items()})
    except _errors() as e:
        raise _read_error(path, e) from None
    if isinstance(state.get("ema"), dict):  # DCP stores no empty dict: a model without buffers has none
        state["ema"].setdefault("buffers", {})
        state["ema"].setdefault("shadow", {})
    if isinstance(local, Mapping) and "rng" in wanted:
        state["rng"] = local["rng"]
    return state


# -- the training state ---------------------------------------------------------------
def _tensors(prefix: str, obj: Any, out: dict[str, Tensor]) -> dict[str, Tensor]:
    """The tensors of a nested dict under DCP's flattened names (``prefix.key.key``)."""
    if isinstance(obj, Tensor):
        out[prefix] = obj
    elif isinstance(obj, Mapping):
        for k, v in obj.items():
            _tensors(f"{prefix}.{k}", v, out)
    return out


def _shape(size: Any) -> str:
    return "(" + ", ".join(str(int(s)) for s in size) + ("," if len(size) == 1 else "") + ")"


def check_fits(path: PathLike, metadata: Any, state: Mapping[str, Any]) -> None:
    """One-line :class:`CheckpointError` unless ``path`` holds every tensor of ``state`` with its global shape,
    and no ``model`` tensor this model lacks; names the first parameter that differs and both shapes."""
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    saved = {k: md for k, md in metadata.state_dict_metadata.items() if isinstance(md, TensorStorageMetadata)}
    here: dict[str, Tensor] = {}
    for top in ("model", "ema", "optimizer"):
        _tensors(top, state.get(top, {}), here)
    problems = []
    for name, tensor in here.items():
        if name not in saved:
            problems.append(f"it lacks {name}, which this model has")
        elif tuple(saved[name].size) != tuple(tensor.shape):
            problems.append(f"{name} is {_shape(saved[name].size)} there and {_shape(tensor.shape)} here")
    extra = sorted(k for k in saved if k.startswith("model.") and k not in here)
    if extra:
        problems.append(f"it holds {extra[0]}, which this model lacks")
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise CheckpointError(f"checkpoint {path} does not fit this model: {problems[0]}{more}")


def training_state(model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, ema: Any,
                   rank: int, world_size: int, step: int) -> dict[str, Any]:
    """The entries one rank saves (see the module docstring); ``model`` is the unwrapped module."""
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_state, optimizer_state = get_state_dict(model, optimizer)
    local = {"rng": rng_state(), "data": {"step": step, "rank": rank, "world_size": world_size}}
    return {
        "model": model_state,
        "optimizer": optimizer_state,
        "ema": ema.state_dict(),
        "scheduler": _blob(scheduler.state_dict()),
        local_key(rank): _blob(local),
    }


def load_training_state(path: PathLike, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
                        ema: Any, rank: int, world_size: int, *, verify: bool = True) -> int:
    """Load checkpoint directory ``path`` into this rank's model (unwrapped module), optimizer, scheduler, EMA and
    RNGs; collective when ``world_size > 1`` (every rank calls it). Returns the checkpoint's step.

    The files are checked against their checksums first (:func:`verify_files`; ``verify=False``: the caller
    just did) and the shapes against the checkpoint's index (:func:`check_fits`) before anything is read.
    """
    from torch.distributed.checkpoint import load
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    path = Path(path)
    meta = read_meta(path)
    if verify:
        verify_files(path, meta)
    metadata = read_metadata(path)
    model_state, optimizer_state = get_state_dict(model, optimizer)
    ema_state = ema.state_dict()
    template = {"model": model_state, "optimizer": optimizer_state, "ema": ema_state, "scheduler": None}
    check_fits(path, metadata, template)
    distributed = world_size > 1 and dist.is_initialized()
    try:
        with _quiet():
            load(template, storage_reader=_reader(path), planner=_planner(), no_dist=not distributed)
            local: dict[str, Any] = {local_key(rank): None}
            if local_key(rank) in metadata.state_dict_metadata:  # this rank's own entry: read by it alone
                load(local, storage_reader=_reader(path), planner=_planner(), no_dist=True)
        schedule, own = _unblob(template["scheduler"]), _unblob(local[local_key(rank)])
    except _errors() as e:
        raise _read_error(path, e) from None
    set_state_dict(model, optimizer, model_state_dict=template["model"], optim_state_dict=template["optimizer"])
    ema.load_state_dict(template["ema"])  # the shadow was read in place; this restores the update count
    scheduler.load_state_dict(schedule)
    if isinstance(own, Mapping):
        set_rng_state(own["rng"])
    return int(meta["step"])


def _host_copy(obj: Any) -> Any:
    """``obj`` with every tensor copied to host memory, once: a DTensor keeps its mesh and placements around a copy
    of its local shard (DCP's default staging copies a DTensor's storage twice)."""
    from torch.distributed.tensor import DTensor

    if isinstance(obj, DTensor):
        local = obj.to_local()
        copy = torch.empty_like(local, device="cpu").copy_(local)
        return DTensor.from_local(copy, obj.device_mesh, obj.placements, run_check=False, shape=obj.shape,
                                  stride=obj.stride())
    if isinstance(obj, Tensor):
        return torch.empty_like(obj, device="cpu").copy_(obj.detach())
    if isinstance(obj, Mapping):
        return {k: _host_copy(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_host_copy(v) for v in obj)
    return obj


class _Staged:
    """DCP's async stager protocol for a state :func:`_host_copy` already staged: handed over as it is."""

    _synchronize_after_execute = False
    should_synchronize_after_execute = False

    def stage(self, state_dict: Any, *args: Any, **kwargs: Any) -> Any:
        return state_dict

    def synchronize_staging(self) -> None:
        pass

    def close(self) -> None:
        pass


class ShardedCheckpointer:
    """Writes the loop's checkpoints as DCP directories through ``manager`` (a
    :class:`~ntm.train.checkpoint.CheckpointManager`; see the module docstring).

    Every rank calls :meth:`save` at the same step; rank 0 alone creates, commits and prunes directories.
    With ``async_save`` the writes run in the background and a finished save is committed by
    :meth:`poll` (call it every step) or :meth:`wait`.
    """

    def __init__(self, manager: CheckpointDirectory, rank: int, world_size: int, *, async_save: bool = False,
                 meta: Mapping[str, Any] | None = None) -> None:
        self.manager = manager
        self.rank = rank
        self.world_size = world_size
        self.async_save = async_save
        self.meta = dict(meta or {})
        self.distributed = world_size > 1 and dist.is_initialized()
        # async writes run collectives from a thread: on a group of their own, never the training's
        self.group = dist.new_group(backend="gloo") if async_save and self.distributed else None
        if async_save and not self.distributed:  # the background thread's saves note it too, out of _quiet's reach
            warnings.filterwarnings("ignore", message=_NO_PG_NOTE)
        self._pending: tuple[Any, int, Path, float, dict[str, Any]] | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def _barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def save(self, step: int, state: dict[str, Any], *, block: bool = False,
             extra: Mapping[str, Any] | None = None) -> Path | None:
        """Write ``state`` (:func:`training_state`) as the checkpoint of ``step``.

        Returns the committed directory on rank 0 when the save completed here (synchronous, or ``block``),
        else ``None``. Waits for a save still in flight first. ``extra``: small JSON entries of this save
        (rank 0's), kept in ``meta.json`` and read back as top-level keys of :func:`read_checkpoint_dir`'s state.
        """
        from torch.distributed.checkpoint import FileSystemWriter, async_save, save

        self.wait()
        tmp = self.manager.temp_dir_for(step)
        started = self.manager.begin(step) if self.is_main else 0.0
        self._barrier()  # the temporary directory is fresh before anyone writes into it
        writer = FileSystemWriter(tmp)
        try:
            with _quiet():
                if self.async_save:  # one host copy of this rank's state, written while training goes on
                    future = async_save(_host_copy(state), storage_writer=writer, process_group=self.group,
                                        no_dist=not self.distributed, async_stager=_Staged())
                    self._pending = (future, step, tmp, started, dict(extra or {}))
                    return self.wait() if block else None
                save(state, storage_writer=writer, no_dist=not self.distributed)
        except _errors() as e:
            raise _save_error(step, tmp, e) from e
        return self._commit(step, tmp, started, dict(extra or {}))

    def poll(self) -> Path | None:
        """Commit a finished background save (rank 0); returns its directory, else ``None``. Not collective."""
        if self._pending is not None and self._pending[0].done():
            return self.wait()
        return None

    def wait(self) -> Path | None:
        """Wait for the save in flight, if any, and commit it (rank 0); returns its directory on rank 0."""
        if self._pending is None:
            return None
        future, step, tmp, started, extra = self._pending
        self._pending = None
        try:
            future.result()
        except _errors() as e:
            raise _save_error(step, tmp, e) from e
        return self._commit(step, tmp, started, extra)

    def _commit(self, step: int, tmp: Path, started: float, extra: dict[str, Any]) -> Path | None:
        # DCP's finish (rank 0 writes .metadata) follows every rank's writes: all bytes are on disk here
        if not self.is_main:
            return None
        meta = {"format": FORMAT, "step": step, "world_size": self.world_size, **self.meta,
                "files": file_digests(tmp), **({"extra": extra} if extra else {})}
        return self.manager.commit(step, tmp, meta, started=started)


def _save_error(step: int, tmp: Path, err: BaseException) -> BaseException:
    """What a failed save raises: a full disk (or quota) as the ``OSError`` itself, so that the command line says
    the disk is full and names the file; anything else as one-line :class:`CheckpointError`."""
    cause = _cause(err)
    if isinstance(cause, OSError) and cause.errno in (errno.ENOSPC, errno.EDQUOT):
        return cause
    return CheckpointError(f"saving checkpoint step {step} to {tmp} failed ({first_line(cause)})")


def bytes_per_rank(path: PathLike) -> dict[int, int]:
    """Bytes of each rank's file in checkpoint directory ``path`` (``__<rank>_<n>.distcp``)."""
    out: dict[int, int] = {}
    for f in Path(path).glob("__*_*.distcp"):
        rank = int(f.name[2:].split("_", 1)[0])
        out[rank] = out.get(rank, 0) + f.stat().st_size
    return dict(sorted(out.items()))


__all__ = [
    "FORMAT", "ShardedCheckpointer", "bytes_per_rank", "check_fits", "checkpoint_parts", "load_training_state",
    "file_digests", "local_key", "read_checkpoint_dir", "read_meta", "read_metadata", "training_state", "verify_files",
]
