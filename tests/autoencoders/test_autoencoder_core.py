"""The autoencoder interface on the conv VAE and the identity: shapes, unit-scale latents, fingerprints, the
autoencoder.pt file and its errors, and that the conv objective trains."""

from __future__ import annotations

import itertools

import pytest
import torch

from ntm.autoencoders import (
    AutoencoderError,
    ConvAutoencoderConfig,
    IdentityAutoencoderConfig,
    PretrainedAutoencoderConfig,
    load_autoencoder,
    save_autoencoder,
)
from ntm.autoencoders.files import load_into
from ntm.data import DigitsConfig

DIGITS = (1, 8, 8)


def tiny(downsample: int = 2, **fields) -> ConvAutoencoderConfig:
    return ConvAutoencoderConfig(**{"downsample": downsample, "latent_channels": 4, "width": 8, "blocks": 0, **fields})


def built(config: ConvAutoencoderConfig, shape=DIGITS, seed: int = 0):
    torch.manual_seed(seed)
    return config.build(shape).eval()


@pytest.fixture(scope="module")
def digits() -> torch.Tensor:
    """160 training digits in [-1, 1], in the order the training stream gives them."""
    batches = DigitsConfig().build().train_batches(64, seed=0)
    return torch.cat([b.x for b in itertools.islice(batches, 3)])[:160]


@pytest.fixture
def saved(tmp_path, digits):
    """``(file, model, config)``: a tiny x2 autoencoder with fitted latent statistics, saved."""
    config = tiny()
    model = built(config)
    model.fit_latent_stats(digits.split(64), max_examples=128)
    return save_autoencoder(tmp_path / "autoencoder.pt", model, config, DIGITS), model, config


# -- shapes -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("downsample", [2, 4, 8])
@pytest.mark.parametrize("shape", [(3, 16, 16), (1, 8, 24)])
def test_latent_and_decoded_shapes(downsample, shape):
    model = built(tiny(downsample, latent_channels=3), shape)
    _, h, w = shape
    expected = (3, h // downsample, w // downsample)
    assert model.latent_shape(shape) == expected
    x = torch.rand(2, *shape) * 2 - 1
    z = model.encode(x)
    assert z.shape == (2, *expected) and model.encode_raw(x).shape == z.shape
    assert model.decode(z).shape == (2, *shape) and model.decode_raw(z).shape == (2, *shape)


def test_encode_is_deterministic_and_forward_is_not(digits):
    model = built(tiny(4), (1, 8, 8))
    x = digits[:16]
    assert torch.equal(model.encode(x), model.encode(x))
    loss_a, _ = model(x, generator=torch.Generator().manual_seed(0))
    loss_b, _ = model(x, generator=torch.Generator().manual_seed(1))
    assert loss_a.item() != loss_b.item()  # training samples the posterior; encoding takes its mean


# -- latent statistics -------------------------------------------------------------------------------------
def test_fitted_statistics_put_the_latents_at_zero_mean_and_unit_scale(digits):
    model = built(tiny())
    with torch.no_grad():  # make the raw latents clearly not unit-scale, so the fit has something to do
        head = model.encoder[-1]
        head.weight.mul_(5.0)
        head.bias[:4].add_(torch.tensor([3.0, -2.0, 0.5, 1.0]))
    raw = model.encode_raw(digits[:100]).double()
    assert (raw.mean(dim=(0, 2, 3)).abs() > 0.3).any() or ((raw.std(dim=(0, 2, 3)) - 1).abs() > 0.3).any()
    assert not bool(model.stats_fitted)

    stats = model.fit_latent_stats(digits.split(64), max_examples=100)  # 64 + the first 36 of the next batch
    assert stats["examples"] == 100 and bool(model.stats_fitted)
    z = model.encode(digits[:100]).double()
    mean = z.mean(dim=(0, 2, 3))
    std = z.permute(1, 0, 2, 3).reshape(4, -1).std(dim=1, unbiased=False)
    assert torch.allclose(mean, torch.zeros(4, dtype=torch.float64), atol=1e-5), mean
    assert torch.allclose(std, torch.ones(4, dtype=torch.float64), atol=1e-4), std
    assert torch.allclose(torch.tensor(stats["shift"], dtype=torch.float64), raw.mean(dim=(0, 2, 3)), atol=1e-5)
    # the images past max_examples were not used: fitting on all 160 gives other statistics
    other = built(tiny())
    other.load_state_dict(model.state_dict())
    assert not torch.allclose(torch.tensor(other.fit_latent_stats(digits.split(64), max_examples=160)["shift"]),
                              torch.tensor(stats["shift"]), atol=1e-6)
    # decode undoes the shift and scale: decode(encode(x)) == decode_raw(encode_raw(x))
    x = digits[:8]
    assert torch.allclose(model.decode(model.encode(x)), model.decode_raw(model.encode_raw(x)), atol=1e-5)


def test_fitting_on_no_images_is_an_error():
    with pytest.raises(AutoencoderError, match="no images"):
        built(tiny()).fit_latent_stats(iter(()))


# -- fingerprint and file -----------------------------------------------------------------------------------
def test_the_fingerprint_follows_weights_and_statistics_and_survives_save_and_load(saved):
    file, model, _ = saved
    before = model.fingerprint()
    assert len(before) == 16 and model.fingerprint() == before
    assert built(tiny(), seed=1).fingerprint() != built(tiny(), seed=0).fingerprint()
    loaded, _ = load_autoencoder(file)
    assert loaded.fingerprint() == before

    with torch.no_grad():
        loaded.decoder[-1].weight[0, 0, 0, 0] += 1e-3
    assert loaded.fingerprint() != before
    loaded, _ = load_autoencoder(file)
    loaded.latent_scale[2] *= 1.01
    assert loaded.fingerprint() != before
    loaded, _ = load_autoencoder(file)
    loaded.latent_shift[0] += 1e-4
    assert loaded.fingerprint() != before


def test_a_saved_autoencoder_loads_back_encoding_and_decoding_identically(saved, digits):
    file, model, config = saved
    x = digits[:32]
    for loaded in (load_autoencoder(file)[0], load_autoencoder(file.parent, DIGITS)[0],  # the file or its run dir
                   config.replace(weights=str(file)).build(DIGITS),  # conv --autoencoder.weights
                   PretrainedAutoencoderConfig(path=str(file.parent)).build(DIGITS)):  # pretrained --autoencoder.path
        loaded.eval()
        assert bool(loaded.stats_fitted)
        assert torch.equal(loaded.encode(x), model.encode(x))
        z = model.encode(x)
        assert torch.equal(loaded.decode(z), model.decode(z))
    assert load_autoencoder(file)[1] == config  # the saved config, without a weights path


@pytest.mark.parametrize("field, value", [("latent_channels", 8), ("downsample", 4), ("width", 16), ("blocks", 1)])
def test_loading_into_another_architecture_names_the_field_and_the_file(saved, field, value):
    file, _, config = saved
    other = config.replace(**{field: value})
    with pytest.raises(AutoencoderError) as info:
        load_into(built(other), other, file)
    message = str(info.value)
    assert f"autoencoder.{field} is {value!r}" in message and str(file) in message
    assert "\n" not in message
    with pytest.raises(AutoencoderError, match=f"autoencoder.{field}"):
        other.replace(weights=str(file)).build(DIGITS)


def test_files_that_are_not_autoencoders_are_refused_naming_the_file(tmp_path, saved):
    garbage = tmp_path / "random.bin"
    garbage.write_bytes(torch.randint(0, 256, (512,), dtype=torch.uint8).numpy().tobytes())
    plain = tmp_path / "state.pt"
    torch.save({"model": {"w": torch.zeros(2)}}, plain)
    empty_run = tmp_path / "not-a-run"
    empty_run.mkdir()
    missing = tmp_path / "absent.pt"
    for path in (garbage, plain, empty_run, missing):
        for load in (lambda p: load_autoencoder(p), lambda p: tiny(weights=str(p)).build(DIGITS),
                     lambda p: PretrainedAutoencoderConfig(path=str(p)).build(DIGITS)):
            with pytest.raises(AutoencoderError) as info:
                load(path)
            assert str(path) in str(info.value), info.value


def test_images_of_the_wrong_size_or_channels_are_refused(saved, digits):
    file, model, config = saved
    for shape in [(3, 8, 8), (1, 9, 8), (1, 8, 7), (64,)]:
        with pytest.raises(AutoencoderError):
            model.latent_shape(shape)
    for shape in [(1, 12, 12), (3, 16, 20), (2,)]:
        with pytest.raises(AutoencoderError):
            tiny(8).build(shape)
    with pytest.raises(AutoencoderError, match="1-channel"):  # the file's autoencoder was trained on grey digits
        load_autoencoder(file, (3, 8, 8))
    with pytest.raises(AutoencoderError, match="1-channel"):
        config.replace(weights=str(file)).build((3, 8, 8))
    with pytest.raises(AutoencoderError):
        PretrainedAutoencoderConfig(path=str(file)).build((1, 9, 9))


# -- identity -------------------------------------------------------------------------------------------------
def test_the_identity_round_trip_is_exact():
    model = IdentityAutoencoderConfig().build((3, 5, 7))
    x = torch.randn(4, 3, 5, 7)
    assert model.latent_shape((3, 5, 7)) == (3, 5, 7) and model.factor == 1
    assert torch.equal(model.encode(x), x) and torch.equal(model.decode(model.encode(x)), x)
    assert IdentityAutoencoderConfig.is_identity and not ConvAutoencoderConfig.is_identity


# -- training ------------------------------------------------------------------------------------------------
def test_a_few_training_steps_through_forward_reduce_the_loss(digits):
    model = built(tiny()).train()
    probe = digits[:64]

    def loss_on_probe() -> float:
        with torch.no_grad():
            return model(probe, generator=torch.Generator().manual_seed(123))[0].item()

    before = loss_on_probe()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    for step in range(40):
        loss, metrics = model(digits[(step % 2) * 64:(step % 2 + 1) * 64 + 32], generator=gen)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        assert set(metrics) == {"mse", "kl", "psnr"} and torch.isfinite(loss)
    after = loss_on_probe()
    assert after < 0.5 * before, (before, after)
