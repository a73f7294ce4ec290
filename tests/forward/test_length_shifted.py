"""The paper's length-shifted schedule (C.4): sigma_k = e^mu / (e^mu + 1/sigma~_k - 1), mu = 0.5 + 0.65 (L-256)/3840."""

import math

import pydantic
import pytest
import torch

from ntm.forward import SCHEDULES, MarkovConfig, ScheduleError, ShiftedConfig, UniformConfig
from ntm.forward.schedules import LengthShiftedConfig, length_shift_mu, length_shifted_levels

F64 = torch.float64


def test_length_shifted_is_registered_with_a_description():
    entry = SCHEDULES.get("length-shifted")
    assert entry.config_cls is LengthShiftedConfig
    assert entry.cls.__doc__ and entry.cls.__doc__.strip().splitlines()[0]
    assert LengthShiftedConfig.model_fields["tokens"].description  # --help text


def test_mu_is_half_at_256_tokens_and_linear_in_the_token_count():
    assert length_shift_mu(256) == 0.5
    assert LengthShiftedConfig().mu == 0.5  # the default L = 256
    assert length_shift_mu(1024) == pytest.approx(0.63, abs=1e-15)  # 0.5 + 0.65 * 768 / 3840
    assert length_shift_mu(4096) == pytest.approx(1.15, abs=1e-15)  # 0.5 + 0.65
    assert LengthShiftedConfig(tokens=64).mu == pytest.approx(0.5 - 0.65 * 192 / 3840, abs=1e-15)


@pytest.mark.parametrize("tokens, mu, levels", [
    # hand-computed sigma_1 .. sigma_{K-1} (K = 4): e^mu / (e^mu + 4/k - 1)
    (256, 0.5, (0.35466, 0.62246, 0.83182)),  # e^0.5 = 1.648721: 1.648721 / 4.648721, / 2.648721, / 1.982055
    (1024, 0.63, (0.38495, 0.65249, 0.84924)),  # e^0.63 = 1.877611
    (4096, 1.15, (0.51284, 0.75951, 0.90453)),  # e^1.15 = 3.158193
])
def test_closed_form_at_several_token_counts(tokens, mu, levels):
    times = LengthShiftedConfig(tokens=tokens, t_min=0.02).build().times(4)
    expected = torch.tensor([0.02, *levels, 1.0], dtype=F64)
    torch.testing.assert_close(times, expected, rtol=0, atol=1e-5)
    # and exactly the printed formula, level by level
    e = math.exp(mu)
    for k in range(1, 4):
        assert times[k].item() == pytest.approx(e / (e + 4 / k - 1), rel=1e-13)


def test_paper_values_at_256_tokens_for_8_and_16_steps():
    t8 = LengthShiftedConfig(t_min=0.02).build().times(8)
    torch.testing.assert_close(t8[1:], torch.tensor([0.1906, 0.3547, 0.4973, 0.6225, 0.7332, 0.8318, 0.9203, 1.0],
                                                    dtype=F64), rtol=0, atol=5e-5)
    t16 = LengthShiftedConfig(t_min=0.02).build().times(16)
    assert t16[1].item() == pytest.approx(0.0990, abs=5e-5) and t16[15].item() == pytest.approx(0.9611, abs=5e-5)


@pytest.mark.parametrize("k", [1, 2, 3, 4, 8, 16])
def test_mu_zero_gives_the_unshifted_levels(k):
    torch.testing.assert_close(length_shifted_levels(k, 0.0), torch.arange(k + 1, dtype=F64) / k, rtol=0, atol=1e-15)


@pytest.mark.parametrize("tokens", [1, 256, 1024, 4096, 16384])
@pytest.mark.parametrize("rescale", [False, True])
@pytest.mark.parametrize("k", [1, 2, 4, 8, 16])
def test_levels_increase_from_t_min_to_one(tokens, rescale, k):
    config = LengthShiftedConfig(tokens=tokens, t_min=0.03, rescale=rescale)
    times = config.build().times(k)
    assert times.shape == (k + 1,) and times.dtype == F64
    assert times[0].item() == 0.03 and times[-1].item() == 1.0
    assert (times.diff() > 0).all()
    sigma = length_shifted_levels(k, config.mu)
    assert sigma[0] == 0 and sigma[-1] == 1 and (sigma.diff() > 0).all()
    if rescale:  # into [t_min, 1], the way `shifted` maps its levels: that is `shifted` with shift e^mu
        torch.testing.assert_close(times, ShiftedConfig(t_min=0.03, shift=math.exp(config.mu)).build().times(k))
    else:  # the paper: t_min prepended to sigma_1 .. sigma_K, which do not depend on t_min
        torch.testing.assert_close(times[1:], sigma[1:], rtol=0, atol=0)


def test_longer_sequences_spend_more_levels_near_noise():
    for k in (2, 4, 8, 16):
        previous = None
        for tokens in (64, 256, 1024, 4096, 8192):
            times = LengthShiftedConfig(tokens=tokens).build().times(k)
            if previous is not None:
                assert (times[1:-1] > previous[1:-1]).all()  # every interior level moves toward noise
                assert (times > 0.5).sum() >= (previous > 0.5).sum()
            previous = times
    # at K = 16: 10 of the 16 levels above t = 0.5 at 256 tokens, 13 at 4096
    assert (LengthShiftedConfig(tokens=256).build().times(16)[1:] > 0.5).sum() == 10
    assert (LengthShiftedConfig(tokens=4096).build().times(16)[1:] > 0.5).sum() == 13
    # and the shift is above the uniform schedule's levels (mu > 0 for every token count >= 1)
    uniform = UniformConfig(t_min=1e-3).build().times(8)
    assert (LengthShiftedConfig(tokens=1, t_min=1e-3, rescale=True).build().times(8) >= uniform).all()


def test_supports_every_k_whose_first_level_clears_t_min():
    rescaled = LengthShiftedConfig(rescale=True).build()
    assert all(rescaled.supports(k) for k in range(1, 257))
    assert not rescaled.supports(0)
    rescaled.times(256)
    paper = LengthShiftedConfig().build()  # t_min = 0.05, mu = 0.5: sigma_1 = e^0.5 / (e^0.5 + K - 1)
    largest = max(k for k in range(1, 200) if math.exp(0.5) / (math.exp(0.5) + k - 1) > 0.05)
    assert largest == 32
    assert all(paper.supports(k) for k in range(1, largest + 1))
    assert not paper.supports(largest + 1) and not paper.supports(0)
    with pytest.raises(ScheduleError, match="sigma_1 = 0.049 is not above t_min = 0.05"):
        paper.times(33)
    assert LengthShiftedConfig(t_min=1e-3).build().supports(256)  # a lower noise floor serves more steps
    with pytest.raises(ValueError, match="schedule cannot serve K = 64"):
        MarkovConfig(schedule=LengthShiftedConfig(), steps=(4, 64))
    MarkovConfig(schedule=LengthShiftedConfig(tokens=1024), steps=(4, 8, 16))  # the paper's set


def test_config_fields_are_validated():
    for bad in ({"tokens": 0}, {"t_min": 0.0}, {"t_min": 1.0}, {"t_min": float("nan")}, {"tokens": 1.5}):
        with pytest.raises(pydantic.ValidationError):
            LengthShiftedConfig(**bad)
    config = LengthShiftedConfig(tokens=1024, t_min=0.02)
    assert SCHEDULES.load(SCHEDULES.dump(config)) == config
    assert SCHEDULES.dump(config) == {"name": "length-shifted", "t_min": 0.02, "tokens": 1024, "rescale": False}
