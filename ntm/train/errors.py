"""User-facing training errors.

Every error raised here carries a one-line message that says what went wrong
and names the file or value involved, so a launcher can print ``str(err)``
instead of a traceback.
"""

from __future__ import annotations


class TrainingError(RuntimeError):
    """Base of the user-facing training errors; the message is one line."""


class CheckpointError(TrainingError):
    """A checkpoint is missing, unreadable, corrupt, foreign, or from a different config."""


class NonFiniteLossError(TrainingError):
    """The training loss became NaN or infinite."""
