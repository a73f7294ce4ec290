"""FID / KID / precision-recall through torch-fidelity, with the digits domain extractor and the offline Inception path."""

import numpy as np
import pytest
import torch
import torch_fidelity

import ntm.eval.fidelity as fidelity
from ntm.eval.domain_classifier import load_domain_classifier
from ntm.eval.fidelity import (
    DOMAIN_EXTRACTOR,
    ImageTensorDataset,
    domain_extractor_for_digits,
    fidelity_metrics,
    to_uint8_rgb,
)

FAST = {"kid_subsets": 10}  # torch-fidelity's default 100 subsets costs ~3 s of numpy per call


@pytest.fixture(scope="module")
def extractor(digits_classifier_cache):
    """``(name, kwargs)`` of the digits domain extractor, from the session's trained classifier (no retraining)."""
    cache, _ = digits_classifier_cache
    return domain_extractor_for_digits(cache_dir=cache)


def _noisy(x, level, seed=0):
    return (x + level * torch.randn(x.shape, generator=torch.Generator().manual_seed(seed))).clamp(0, 1)


# -- metrics through torch-fidelity ---------------------------------------------


def test_identical_sets_give_zero_fid_and_full_precision_recall(extractor, digits):
    name, kwargs = extractor
    ref = digits["eval_x"]
    out = fidelity_metrics(ref, ref, extractor=name, **FAST, **kwargs)
    assert set(out) == {"fid", "kid_mean", "kid_std", "precision", "recall", "f_score"}
    assert abs(out["fid"]) < 1e-6
    assert out["precision"] == 1.0 and out["recall"] == 1.0
    # KID is torch-fidelity's *unbiased* MMD², so for a set against itself it is not 0 but exactly
    # -(2/m) (mean_i k(x_i, x_i) - mean_{i != j} k(x_i, x_j)) <= 0 (every subset is the whole set here)
    f = load_domain_classifier(kwargs["weights_path"]).features(ref).double()
    m, d = f.shape
    k = (f @ f.T / d + 1) ** 3
    off = (k.sum() - k.diagonal().sum()) / (m * (m - 1))
    expected = float(-2 / m * (k.diagonal().mean() - off))
    assert expected < 0
    assert out["kid_mean"] == pytest.approx(expected, rel=1e-3)
    assert out["kid_std"] < 1e-4


def test_fid_and_kid_grow_with_noise(extractor, digits):
    name, kwargs = extractor
    ref = digits["eval_x"]
    results = [fidelity_metrics(_noisy(ref, s), ref, extractor=name, **FAST, **kwargs) for s in (0.05, 0.15, 0.4)]
    fids = [r["fid"] for r in results]
    kids = [r["kid_mean"] for r in results]
    assert 0 < fids[0] < fids[1] < fids[2]
    assert kids[0] < kids[1] < kids[2] and kids[2] > 0
    assert results[2]["precision"] < 1.0 and results[2]["recall"] < 1.0


def test_same_distribution_scores_far_better_than_noise(extractor, digits):
    name, kwargs = extractor
    ref = digits["eval_x"]
    same = fidelity_metrics(digits["train_x"], ref, extractor=name, prc=False, **FAST, **kwargs)
    noisy = fidelity_metrics(_noisy(ref, 0.4), ref, extractor=name, prc=False, **FAST, **kwargs)
    assert same["fid"] < noisy["fid"] / 3
    assert abs(same["kid_mean"]) < noisy["kid_mean"] / 3


def test_the_registered_extractor_works_in_calculate_metrics_directly(extractor, digits):
    _, kwargs = extractor
    ref = digits["eval_x"][:100]
    out = torch_fidelity.calculate_metrics(
        input1=ImageTensorDataset(ref), input2=ImageTensorDataset(ref), fid=True,
        feature_extractor=DOMAIN_EXTRACTOR, feature_extractor_weights_path=kwargs["weights_path"],
        cuda=False, save_cpu_ram=True, verbose=False, cache=False,
    )  # fmt: skip
    assert abs(out["frechet_inception_distance"]) < 1e-6


def test_bad_inputs_are_refused(extractor, digits):
    name, kwargs = extractor
    ref = digits["eval_x"]
    with pytest.raises(ValueError, match="to_display"):
        fidelity_metrics(ref * 2 - 1, ref, extractor=name, **kwargs)
    with pytest.raises(ValueError, match="image shapes differ"):
        fidelity_metrics(ref[:, :, :4], ref, extractor=name, **kwargs)
    with pytest.raises(ValueError, match="kid_subset_size"):
        fidelity_metrics(ref, ref, extractor=name, kid_subset_size=1000, **kwargs)
    with pytest.raises(ValueError, match="unsupported extractor_kwargs"):
        fidelity_metrics(ref, ref, extractor=name, batchsize=3, **kwargs)
    with pytest.raises(ValueError, match="unknown feature extractor"):
        fidelity_metrics(ref, ref, extractor="no-such-net")
    with pytest.raises(ValueError, match="weights_path"):
        fidelity_metrics(ref, ref, extractor=name)
    with pytest.raises(ValueError, match="domain classifier expects"):
        fidelity_metrics(to_uint8_rgb(ref).float() / 255, to_uint8_rgb(ref).float() / 255, extractor=name, **kwargs)


# -- the standard Inception path (plumbing only: no weights here, never a download) -----


@pytest.fixture
def no_download(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch_fidelity.feature_extractor_inceptionv3, "load_state_dict_from_url", refuse)


def test_inception_with_a_missing_weights_file_names_the_path(no_download, digits, tmp_path):
    missing = tmp_path / "pt_inception-2015-12-05.pth"
    with pytest.raises(FileNotFoundError) as err:
        fidelity_metrics(digits["eval_x"], digits["eval_x"], extractor="inception-v3-compat", weights_path=missing)
    assert str(missing) in str(err.value) and "\n" not in str(err.value)


def test_extractors_that_would_download_are_refused(no_download, digits):
    ref = digits["eval_x"]
    with pytest.raises(ValueError, match="never downloads"):
        fidelity_metrics(ref, ref, extractor="inception-v3-compat")
    with pytest.raises(ValueError, match="never downloads"):
        fidelity_metrics(ref, ref, extractor="dinov2-vit-s-14", weights_path=__file__)


def test_inception_gets_uint8_rgb_and_the_local_weights(no_download, digits, tmp_path, monkeypatch):
    weights = tmp_path / "inception.pth"
    weights.write_bytes(b"not really weights")
    seen = {}

    def fake_calculate_metrics(**kwargs):
        seen.update(kwargs)
        return {"frechet_inception_distance": np.float64(1.5), "kernel_inception_distance_mean": 0.25,
                "kernel_inception_distance_std": 0.0, "precision": 1.0, "recall": 0.5, "f_score": 2 / 3}  # fmt: skip

    monkeypatch.setattr(fidelity, "calculate_metrics", fake_calculate_metrics)
    samples, ref = digits["eval_x"][:40], digits["eval_x"][:50]
    out = fidelity_metrics(samples, ref, extractor="inception-v3-compat", weights_path=weights, batch_size=8)
    assert out == {"fid": 1.5, "kid_mean": 0.25, "kid_std": 0.0, "precision": 1.0, "recall": 0.5, "f_score": 2 / 3}
    assert seen["feature_extractor"] == "inception-v3-compat"
    assert seen["feature_extractor_weights_path"] == str(weights)
    assert seen["cuda"] is False and seen["save_cpu_ram"] is True and seen["batch_size"] == 8
    assert seen["kid_subset_size"] == 40
    item = seen["input1"][0]
    assert torch.is_tensor(item) and item.dtype == torch.uint8 and item.shape == (3, 8, 8)
    assert len(seen["input1"]) == 40 and len(seen["input2"]) == 50
    torch.testing.assert_close(item[1], (samples[0, 0] * 255).round().to(torch.uint8))
