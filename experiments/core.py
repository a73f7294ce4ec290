"""What every ``ntm`` command shares: the user errors and their one-line messages, tyro with the house error
style, flag helpers and the version. The lowest layer of ``ntm.experiments`` (it imports only the plugin loader's error)."""

from __future__ import annotations

import contextlib
import errno
import io
import os
import re
from typing import Any, Callable

import pydantic

from ntm.atomic import TMP_INFIX
from ntm.autoencoders import AutoencoderError
from ntm.data.base import DataError
from ntm.eval.shapes_judge import JudgeNotTrusted
from ntm.experiments.plugins import PluginError
from ntm.forward import ScheduleError
from ntm.registry import ConfigError, RegistryError
from ntm.registry.cli import config_error
from ntm.train.errors import TrainingError



USER_ERRORS = (
    pydantic.ValidationError, ConfigError, DataError, RegistryError, ScheduleError, TrainingError, FileNotFoundError,
    PluginError, AutoencoderError, JudgeNotTrusted,
)


_OS_ERRORS = {
    errno.ENOSPC: "no space left on device writing {path}: the disk is full; free space or write elsewhere",
    errno.EDQUOT: "disk quota exceeded writing {path}: the disk quota is full; free space or write elsewhere",
    errno.EROFS: "read-only file system: cannot write {path}",
    errno.EACCES: "permission denied: {path}",
    errno.EPERM: "operation not permitted: {path}",
    errno.EISDIR: "{path} is a directory; name a file",
    errno.ENOTDIR: "{path}: a part of the path is a file, not a directory",
    errno.EEXIST: "{path} already exists and is in the way",
    errno.ENAMETOOLONG: "file name too long: {path}",
}
"""The errors of the file system that are the user's to fix (a full disk, a read-only or foreign folder, an output
path that names a directory): one line naming the path instead of a traceback. Any other :class:`OSError` is a bug
or a crash, and keeps its traceback."""


def os_error_message(err: BaseException) -> str | None:
    """The one-line message of an :class:`OSError` in :data:`_OS_ERRORS`, naming its file (the final name of a
    temporary ``<name>.tmp-*`` file being written); ``None`` for any other error."""
    if not isinstance(err, OSError) or err.errno not in _OS_ERRORS:
        return None
    name = err.filename2 if err.errno == errno.EISDIR and err.filename2 is not None else err.filename
    if name is None:
        path = "a file (the path was not reported)"
    else:
        path = os.fsdecode(name)
        head, infix, _ = path.partition(TMP_INFIX)
        path = head if infix else path
    return _OS_ERRORS[err.errno].format(path=path)


class UsageError(Exception):
    """A bad command line; the message may hold several lines, one per problem."""


def format_error(err: BaseException) -> str:
    """One line per problem; pydantic errors name the field."""
    if isinstance(err, pydantic.ValidationError):
        return str(config_error(err))
    if isinstance(err, (ConfigError, UsageError)):
        return str(err)
    message = os_error_message(err)
    if message is not None:
        return message
    return str(err).splitlines()[0] if str(err) else type(err).__name__


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("ntm")
    except PackageNotFoundError:  # running from a source tree that is not installed
        return "unknown"


def _tyro_problems(text: str) -> list[str]:
    """tyro's framed error message -> its problem lines (frame, title, help pointers and long lists dropped)."""
    blocks, block = [], []
    for line in text.splitlines():
        stripped = line.strip().strip("│╭╮╰╯─ ").strip()
        if not stripped or set(stripped) <= set("-─━"):
            if block:
                blocks.append(" ".join(block))
                block = []
            continue
        block.append(" ".join(stripped.split()))
    if block:
        blocks.append(" ".join(block))
    blocks = [b for b in blocks if not b.startswith(("For full helptext", "Arguments are applied to the directly"))]
    problems = blocks[1:] if len(blocks) > 1 else blocks  # the first block is a title ("Unrecognized options")
    out = []
    for b in problems:
        if b.startswith("Perhaps you meant"):
            unknown = set(re.findall(r"(--[\w.-]+)", problems[0])) if problems else set()
            flags = [f for f in dict.fromkeys(re.findall(r"(--[\w.-]+)", b)) if f != "--help" and f not in unknown][:2]
            if flags:
                out.append(f"did you mean {' or '.join(flags)}?")
        elif b.startswith("Available subcommands") and any("--" in p for p in problems[:1]):
            continue  # an unknown flag: the list of every subcommand does not help
        else:
            out.append(re.sub(r" \(applied to [^)]*\)", "", b))
    return out


def run_tyro(fn: Callable[..., Any], *args: Any, prog: str, argv: list[str], **kwargs: Any) -> Any:
    """Call a tyro entry point; ``--help`` prints as usual, a parse error becomes a :class:`UsageError`."""
    if any(a in ("-h", "--help") for a in argv):
        return fn(*args, args=argv, prog=prog, **kwargs)
    buf = io.StringIO()
    try:
        with contextlib.redirect_stderr(buf), contextlib.redirect_stdout(buf):
            return fn(*args, args=argv, prog=prog, **kwargs)
    except SystemExit as e:
        if e.code in (0, None):
            print(buf.getvalue(), end="")
            raise
        problems = _tyro_problems(buf.getvalue()) or [f"could not parse {' '.join(argv)!r}"]
        raise UsageError("\n".join([*problems, f"see {prog} --help"])) from None


def pop_flag(args: list[str], flag: str) -> bool:
    if flag in args:
        args.remove(flag)
        return True
    return False


def pop_value(args: list[str], flag: str) -> str | None:
    for i, a in enumerate(args):
        if a == flag:
            if i + 1 >= len(args):
                raise UsageError(f"{flag} needs a value")
            value = args[i + 1]
            del args[i : i + 2]
            return value
        if a.startswith(flag + "="):
            del args[i]
            return a.split("=", 1)[1]
    return None
