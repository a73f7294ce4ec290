"""``ntm ablate SUITE --slot SLOT=NAME,NAME ... --steps K ... --out DIR``: a grid over registered variants.

    ntm ablate toy --slot transporter=identity,tarflow --steps 1 2 4 --out runs/ablate-toy
    ntm ablate digits --slot transporter=identity,tarflow --slot predictor=transformer,trajectory --out runs/ab

Every cell is the suite's preset (``toy-ntm``, ``digits-ntm``) with one registered name per ``--slot`` and one
K of ``--steps``, trained on the same budget and seed. ``--slot`` takes a slot by its command-line path
(``transporter``, ``predictor``, ``process.schedule``, ``conditioner``, ...) and any names registered in it,
plugins' included: a name the preset already uses keeps the preset's settings, another starts from its config's
defaults (as ``slot:name`` on the command line does). The cells run through the bench (:mod:`experiments.bench`:
train or reuse, score, one table and figures; ``figures/compare.png`` shows every cell at the largest K), so a toy row has the oracle gap, energy distance and wall time
and a digits row the held-out NLL and domain FID. When the grid holds ``transporter=identity`` each row also
gets ``gap_ratio`` (toy) or ``nll_ratio`` (digits): its value over the identity cell with the same other
settings and K (the Gaussian model: 1 means the transporter bought nothing).
"""

from __future__ import annotations

import itertools
from typing import Any

from ntm.experiments.bench.suites import BenchModel, EvalPoint, Suite, _variant
from ntm.experiments.config import Experiment
from ntm.experiments.presets import PRESETS
from ntm.registry import ComponentConfig, did_you_mean
from ntm.registry.cli import cli_slots


SUITE_PRESETS = {"toy": "toy-ntm", "digits": "digits-ntm"}
DEFAULT_STEPS = {"toy": 1500, "digits": 1200}
RATIO = {"toy": ("oracle_gap_bpd", "gap_ratio"), "digits": ("nll_traj_bpd", "nll_ratio")}


def _set(config: ComponentConfig, path: list[str], value: Any) -> ComponentConfig:
    head, *rest = path
    return config.replace(**{head: value if not rest else _set(getattr(config, head), rest, value)})


def _get(config: Any, path: list[str]) -> Any:
    for part in path:
        config = getattr(config, part)
    return config


def parse_slots(specs: tuple[str, ...]) -> list[tuple[str, str, list[str]]]:
    """``SLOT=NAME,...`` -> ``(command-line path, data path, names)``; one-line ``ValueError`` for an unknown slot or
    name (listing the known ones)."""
    from ntm.registry.cli import cli_path

    slots = cli_slots(Experiment)
    data_paths = {cli_path(Experiment, p): p for p in _data_paths()}
    parsed = []
    for spec in specs:
        slot, sep, names = spec.partition("=")
        if not sep or not slot or not names:
            raise ValueError(f"--slot takes SLOT=NAME[,NAME...], got {spec!r}")
        if slot not in slots:
            raise ValueError(f"--slot: unknown slot {slot!r}{did_you_mean(slot, list(slots))}; slots: "
                             f"{', '.join(slots)}")
        registry = slots[slot]
        wanted = [n.strip() for n in names.split(",") if n.strip()]
        for name in wanted:
            if name not in registry:
                raise ValueError(f"--slot {slot}: unknown {registry.kind} {name!r}{did_you_mean(name, registry.names())}"
                                 f"; known: {', '.join(registry.names())}")
        if len(set(wanted)) != len(wanted):
            raise ValueError(f"--slot {slot}: a name is given twice ({', '.join(wanted)})")
        parsed.append((slot, data_paths[slot], wanted))
    if len({s for s, _, _ in parsed}) != len(parsed):
        raise ValueError("--slot: a slot is given twice; list its names in one --slot")
    return parsed


def _data_paths() -> list[str]:
    from ntm.registry import registry_slots

    return list(registry_slots(Experiment))


def cell(base: Experiment, choice: list[tuple[str, str, str]]) -> Experiment:
    """``base`` with each ``(cli path, data path, name)``: the preset's own config when it is that variant, else
    the variant's defaults. Incompatible combinations fail validation with the experiment's one-line message."""
    slots = cli_slots(Experiment)
    exp = base
    for slot, path, name in choice:
        parts = path.split(".")
        current, registry = _get(exp, parts), slots[slot]
        value = current if registry.name_of(current) == name else registry.get(name).config_cls()
        exp = _set(exp, parts, value)
    return exp


def ablation_suite(suite: str, slots: list[tuple[str, str, list[str]]], steps: tuple[int, ...], *, train_steps: int,
                   seed: int, tiny: bool, num_samples: int) -> Suite:
    base = PRESETS[SUITE_PRESETS[suite]]
    models = []
    panels = []
    for names in itertools.product(*[n for _, _, n in slots]):
        choice = [(slot, path, name) for (slot, path, _), name in zip(slots, names)]
        label = ",".join(f"{slot}={name}" for slot, _, name in choice) or "preset"
        exp = cell(base, choice)
        for k in steps:
            name = f"{suite}-{'-'.join(names) or 'preset'}-K{k}".replace(":", "_")
            variant = _variant(exp, name, steps=(k,), train_steps=train_steps, seed=seed, tiny=tiny,
                               transporter=exp.model.transporter, predictor=exp.model.predictor)
            models.append(BenchModel(label, variant, (EvalPoint(k, k, guidance=0.0),)))
        panels.append((f"{label}_K{max(steps)}", f"{label} @{max(steps)}"))
    # figures/compare.png: every cell's samples side by side at the largest K
    return Suite(f"ablate-{suite}", tuple(models), num_samples,
                 image_metrics="domain-digits" if suite == "digits" else "none", comparison=tuple(panels))


def add_ratios(rows: list[dict], suite: str, slots: list[tuple[str, str, list[str]]]) -> None:
    """``gap_ratio`` / ``nll_ratio`` of each row against the identity-transporter row with the same other settings
    and K (in place), when the grid holds the identity transporter."""
    key, ratio = RATIO[suite]
    if not any(slot == "transporter" and "identity" in names for slot, _, names in slots):
        return

    def other(row: dict) -> tuple:
        parts = [p for p in row["model"].split(",") if not p.startswith("transporter=")]
        return (*parts, row["K"])

    baseline = {other(r): r["metrics"].get(key) for r in rows if "transporter=identity" in r["model"].split(",")}
    for r in rows:
        base, value = baseline.get(other(r)), r["metrics"].get(key)
        if base and value is not None:
            r["metrics"][ratio] = value / base


__all__ = ["ablation_suite", "add_ratios", "cell", "parse_slots"]
