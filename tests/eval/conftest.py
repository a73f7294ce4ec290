"""Evaluation tests run torch single-threaded (metric kernels are small; threads only add contention).

Shared fixtures: the digits in display range, and the digits domain classifier trained once per
session into a fresh cache directory (never the user's cache).
"""

import pytest
import torch

from ntm.eval.domain_classifier import digits_domain_classifier
from ntm.data.digits import Digits, DigitsConfig


@pytest.fixture(autouse=True)
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def digits():
    data = Digits(DigitsConfig())
    return {
        "train_x": data.to_display(data.normalise(data.train_x)),
        "train_y": data.train_label,
        "eval_x": data.to_display(data.normalise(data.eval_x)),
        "eval_y": data.eval_label,
    }


@pytest.fixture(scope="session")
def digits_classifier_cache(tmp_path_factory):
    """``(cache_dir, model)``: the digits domain classifier, trained once into a fresh cache dir."""
    cache = tmp_path_factory.mktemp("domain_classifiers")
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    model = digits_domain_classifier(cache_dir=cache)
    torch.set_num_threads(previous)
    return cache, model
