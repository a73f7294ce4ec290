"""PNG round trip and the titled side-by-side figure."""

import pytest
import torch

from ntm.viz import captioned_rows, load_png, save_png, titled_row


@pytest.mark.parametrize("channels", [1, 3])
def test_png_round_trip_to_8_bits(tmp_path, channels):
    img = torch.rand(channels, 7, 9, generator=torch.Generator().manual_seed(0))
    back = load_png(save_png(img, tmp_path / "a.png"))
    assert back.shape == img.shape
    assert (back - img).abs().max() <= 0.5 / 255 + 1e-6


def test_titled_row_places_each_panel_under_its_title():
    a, b = torch.zeros(1, 10, 12), torch.zeros(3, 20, 5)  # black panels
    row = titled_row([("first", a), ("second", b)], gap=4, title_height=16)
    assert row.shape == (3, 16 + 20 + 4, 12 + 5 + 3 * 4)
    assert (row[:, 16 + 2 : 16 + 2 + 10, 4 : 4 + 12] == 0).all()  # panel a, expanded to RGB
    assert (row[:, 16 + 2 : 16 + 2 + 20, 20 : 20 + 5] == 0).all()  # panel b
    assert (row[:, :16] < 1).any()  # the titles are drawn
    assert (row[:, 16 + 2 + 10 :, 4 : 4 + 12] == 1).all()  # white below the shorter panel
    with pytest.raises(ValueError, match="at least one panel"):
        titled_row([])


def test_titled_row_wraps_a_long_title_at_commas_and_spaces():
    panel = torch.zeros(1, 40, 60)
    short = titled_row([("a", panel)], gap=4, title_height=16)
    long = titled_row([("transporter=spline-tarflow,predictor.head=logistic-mixture @4", panel)], gap=4, title_height=16)
    assert long.shape[2] == short.shape[2] and long.shape[1] > short.shape[1]  # more lines, same width
    extra = long.shape[1] - short.shape[1]
    assert extra % 12 == 0 and extra >= 24  # whole lines of title_height - 4 pixels, at least three lines in all
    assert (long[:, -(40 + 2):-2, 4:64] == 0).all()  # the panel sits below the taller title block


def test_captioned_rows_stack_one_row_per_caption():
    rows = [("a red circle", torch.zeros(3, 3, 4, 4)), ("", torch.zeros(2, 3, 4, 4))]
    grid = captioned_rows(rows, pad=1, caption_height=10)
    first = 3 * (4 + 1) + 1  # three images with 1-pixel padding
    assert grid.shape == (3, 2 * 10 + 2 * (4 + 2), first)
    assert (grid[:, 10 + 1 : 10 + 5, 1:5] == 0).all()  # the first image of row one
    assert (grid[:, :10] < 1).any() and (grid[:, 10 + 6 : 10 + 6 + 10] < 1).any()  # both captions drawn
    with pytest.raises(ValueError, match="at least one row"):
        captioned_rows([])
