"""Crash-safe checkpoints: single files and sharded directories, a rotating checkpoint directory, RNG capture
and config checks.

Two on-disk formats, read alike by :func:`load_checkpoint` (and so by every reader of a run):

- a **file** ``step_<08d>.pt`` (:mod:`.file`): ``torch.save`` of ``{"ntm_checkpoint": FORMAT_VERSION,
  "state": state}``, written atomically (:func:`ntm.atomic.atomic_write`);
- a **directory** ``step_<08d>/`` (:mod:`.dcp`) written by ``torch.distributed.checkpoint``, every rank its
  own shards, with a ``meta.json`` written last and the directory renamed from ``step_<08d>.tmp-dcp`` once
  complete. Read into one process it gives the state a file holds (full tensors, whatever world size wrote
  it); ``parts`` reads only some entries.

The modules, lowest first (none imports a module listed after it): :mod:`.base` (names in a checkpoint
directory, completeness, :class:`~.base.CheckpointDirectory`), :mod:`.rng`, :mod:`.compare` (config checks on
resume), the formats :mod:`.file` and :mod:`.dcp`, :mod:`.load` (reading either format; the weights to sample
with) and :mod:`.manager` (:class:`CheckpointManager`). This package re-exports their public names.
"""

from ntm.atomic import PathLike, atomic_torch_save
from ntm.train.checkpoint.base import META_FILE, CheckpointDirectory, is_checkpoint_dir
from ntm.train.checkpoint.compare import check_config_matches, config_diff
from ntm.train.checkpoint.file import FORMAT_KEY, FORMAT_VERSION, save_checkpoint
from ntm.train.checkpoint.load import load_checkpoint, load_sampling_weights, read_sampling_state, sampling_state_dict
from ntm.train.checkpoint.manager import CheckpointManager
from ntm.train.checkpoint.rng import rng_state, set_rng_state
from ntm.train.errors import CheckpointError

__all__ = [
    "FORMAT_KEY", "FORMAT_VERSION", "META_FILE", "CheckpointDirectory", "CheckpointError", "CheckpointManager",
    "PathLike", "atomic_torch_save", "check_config_matches", "config_diff", "is_checkpoint_dir", "load_checkpoint",
    "load_sampling_weights", "read_sampling_state", "rng_state", "sampling_state_dict", "save_checkpoint",
    "set_rng_state",
]
