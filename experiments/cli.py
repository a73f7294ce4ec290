"""The ``ntm`` command: ``train``, ``finetune``, ``sample``, ``eval``, ``export``, ``distill``, ``autoencoder``,
``bench``, ``ablate``, ``shards``; in Python, ``ntm.load(RUN_OR_EXPORT)`` (docs/api.md).

    ntm train digits-ntm                                   # a preset
    ntm train toy-ntm transporter:identity --predictor.depth 6
    ntm train digits-ntm predictor:transformer --dry-run   # print the resolved config, touch nothing
    ntm train --config runs/digits-ntm/config.json          # reproduce a run (into a new run directory)
    ntm train digits-ntm --resume                           # continue after a crash
    ntm finetune --from runs/digits-flow-matching           # an NTM started from a flow-matching teacher
    ntm sample --run runs/digits-ntm --guidance 1.5 --steps 4
    ntm eval --run runs/digits-ntm
    ntm export --run runs/digits-ntm --out d.safetensors    # one safe file to share: weights, config, data stats
    ntm sample --checkpoint d.safetensors                   # ... sampled with no run directory
    ntm distill --run runs/digits-ntm && ntm sample --run runs/digits-ntm --denoiser learned   # one-pass denoiser
    ntm bench toy --out runs/bench-toy                      # baselines vs NTM, one table
    ntm bench latency --out runs/bench-latency              # time to one image vs a deep-shallow AR flow
    ntm bench loader --out runs/bench-loader                # data loader vs training step: data- or compute-bound
    ntm bench checkpoint --out runs/bench-checkpoint        # bytes and host memory per rank while saving (2 CPU ranks)
    ntm ablate toy --slot transporter=identity,tarflow --steps 1 2 4 --out runs/ablate   # a grid over variants
    ntm autoencoder train shapes-ae && ntm train shapes-latent-ntm   # an NTM in an autoencoder's latent space
    ntm shards write --folder images/ --out 'shards/train-%06d.tar'
    ntm shards write --source shapes --count 20000 --out 'shards/shapes-%06d.tar'   # captioned procedural scenes
    ntm train shapes-t2i-ntm && ntm sample --run runs/shapes-t2i-ntm --prompt "two red circles"   # text-to-image
    ntm eval --run runs/shapes-t2i-ntm --shapes-eval        # GenEval-style judge, seen / held-out combinations
    ntm --plugin my_pkg.my_module train toy-ntm transporter:shift   # a variant from your own module

Global options (before the command): --plugin MODULE (repeatable; also a .py
file path) imports your module first so its variants register; installed
packages do the same through the entry-point group ``ntm.plugins``.
--version prints the version.

User errors (bad config, bad data, wrong checkpoint, a plugin that does not
import, a full disk, an output path that is a directory) print one line per
problem, ``ntm <command>: error: ...``, and exit with status 2; a non-finite
loss exits with status 3 and keeps the last good checkpoint.
"""

from __future__ import annotations

import sys
import warnings
from typing import Callable

from ntm.experiments.commands import ablate, autoencoder, bench, distill, export, finetune, sample, shards, train
from ntm.experiments.commands import eval as evaluate
from ntm.experiments.core import USER_ERRORS, UsageError, format_error, os_error_message, version
from ntm.experiments.plugins import load_plugins
from ntm.registry import did_you_mean
from ntm.train.errors import NonFiniteLossError
from ntm.train.signals import TrainingStopped

COMMANDS: dict[str, Callable[[list[str]], int]] = {
    "train": train.main, "finetune": finetune.main, "sample": sample.main, "eval": evaluate.main, "bench": bench.main,
    "shards": shards.main, "export": export.main, "distill": distill.main, "autoencoder": autoencoder.main,
    "ablate": ablate.main,
}
"""One module per command under :mod:`ntm.experiments.commands`, each a ``main(args) -> exit status``."""


def _global_options(argv: list[str]) -> tuple[list[str], list[str], bool]:
    """``(plugins, remaining argv, --version)`` from the options before the command."""
    plugins: list[str] = []
    i = 0
    show_version = False
    while i < len(argv) and argv[i].startswith("-") and argv[i] not in ("-h", "--help"):
        if argv[i] == "--version":
            show_version = True
            i += 1
        elif argv[i] == "--plugin":
            if i + 1 >= len(argv):
                raise UsageError("--plugin needs a module name (or a .py file)")
            plugins.append(argv[i + 1])
            i += 2
        elif argv[i].startswith("--plugin="):
            plugins.append(argv[i].split("=", 1)[1])
            i += 1
        else:
            raise UsageError(f"unknown option {argv[i]!r} before the command; global options: --plugin MODULE, --version")
    return plugins, argv[i:], show_version


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        plugins, argv, show_version = _global_options(argv)
    except UsageError as e:
        print(f"ntm: error: {e}", file=sys.stderr)
        return 2
    if show_version:
        print(f"ntm {version()}")
        return 0
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip(), file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    name = argv[0]
    if name not in COMMANDS:
        print(f"ntm: error: unknown command {name!r}{did_you_mean(name, list(COMMANDS))}; "
              f"commands: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    formatwarning, warnings.formatwarning = warnings.formatwarning, _warning_line
    try:
        load_plugins(plugins)
        return COMMANDS[name](argv[1:])
    except TrainingStopped as e:  # SIGTERM / SIGINT during training: a checkpoint was saved
        print(f"ntm {name}: {e}", file=sys.stderr)
        return e.exit_status
    except KeyboardInterrupt:  # Ctrl-C outside a training loop: nothing half-written is left under a final name
        print(f"ntm {name}: interrupted", file=sys.stderr)
        return 130
    except NonFiniteLossError as e:
        print(f"ntm {name}: error: {format_error(e)}", file=sys.stderr)
        return 3
    except (*USER_ERRORS, UsageError) as e:
        for line in format_error(e).splitlines():
            print(f"ntm {name}: error: {line}", file=sys.stderr)
        return 2
    except OSError as e:  # a full disk, a read-only folder, an output path naming a directory: the user's to fix
        message = os_error_message(e)
        if message is None:
            raise
        print(f"ntm {name}: error: {message}", file=sys.stderr)
        return 2
    finally:
        warnings.formatwarning = formatwarning


def _warning_line(message, category, filename, lineno, line=None) -> str:
    """Warnings as one line each: ``ntm: warning: ...`` (no source line)."""
    return f"ntm: warning: {message}\n"


if __name__ == "__main__":
    sys.exit(main())
