"""The benchmarks behind ``ntm bench``: the suites of models trained side by side (:mod:`.suites`, :mod:`.shapes`),
their training, evaluation and reports (:mod:`.training`, :mod:`.runner`, :mod:`.report`), the ablations
(:mod:`.ablate`), and the benches of one cost each: sampling latency (:mod:`.latency`), the data loader
(:mod:`.loader`), checkpoint saves (:mod:`.checkpoint`), the training step on one GPU (:mod:`.gpu`), run sizing
(:mod:`.scaling`) and the oracle-NLL gap (:mod:`.oracle_gap`).

This package imports the suites and the runner; the single-cost benches load when named.
"""

from __future__ import annotations

from typing import Callable

from ntm.experiments.bench.runner import run_suite
from ntm.experiments.bench.shapes import SHAPES_PROMPTS, latent_suite, shapes_suite
from ntm.experiments.bench.suites import (BenchModel, EvalPoint, Suite, digits_suite, generative_params, paper_suite,
                                          toy_suite)

SUITES: dict[str, Callable[..., Suite]] = {"toy": toy_suite, "digits": digits_suite, "paper": paper_suite,
                                          "shapes": shapes_suite, "latent": latent_suite}

__all__ = ["SUITES", "SHAPES_PROMPTS", "BenchModel", "EvalPoint", "Suite", "digits_suite", "generative_params",
           "latent_suite", "paper_suite", "run_suite", "shapes_suite", "toy_suite"]
