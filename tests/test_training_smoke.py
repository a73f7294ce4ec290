"""A short training run on 2-D mixture data: the trajectory NLL must go down."""

import torch

from ntm.data.mixture import GaussianMixture
from ntm.forward import MarkovConfig
from ntm.losses import EndToEndLoss
from ntm.model import NTMConfig
from ntm.predictors import TransformerPredictorConfig
from ntm.spec import ModelDims
from ntm.transporters import TarFlowConfig


def test_trajectory_nll_goes_down_on_a_2d_mixture():
    torch.manual_seed(0)
    data = GaussianMixture.ring(8, radius=2.0, std=0.2)
    cfg = NTMConfig(
        transporter=TarFlowConfig(width=32, num_heads=2),
        predictor=TransformerPredictorConfig(depth=2, width=32),
        process=MarkovConfig(steps=(2,)),
    )
    model = cfg.build(ModelDims(2, 1))
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    loss_fn = EndToEndLoss()
    gen = torch.Generator().manual_seed(0)
    eval_x = data.sample(2048, torch.Generator().manual_seed(1)).float().reshape(-1, 2, 1)

    def held_out() -> float:
        with torch.no_grad():
            return loss_fn(model, eval_x, generator=torch.Generator().manual_seed(2)).loss.item()

    before = held_out()
    for _ in range(150):
        x = data.sample(256, gen).float().reshape(-1, 2, 1)
        out = loss_fn(model, x, generator=gen)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    after = held_out()
    assert after < before - 0.3, (before, after)
