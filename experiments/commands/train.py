"""``ntm train PRESET [slot:variant] [--field value] [--config FILE] [--resume] [--dry-run]``: train a run."""

from __future__ import annotations

from ntm.experiments.training import parse_experiment, run_request


def main(args: list[str]) -> int:
    return run_request(parse_experiment(args), "train")
