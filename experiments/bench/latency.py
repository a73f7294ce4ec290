"""``ntm bench latency``: the time to one image and batched throughput, NTM vs a single AR flow and flow matching.

The paper's real-time claim compares a few-step NTM with a single autoregressive flow of the same parameter count
in the deep-shallow form (one deep causal block nearest the prior plus shallow blocks alternating the scan
direction). An AR flow decodes its tokens one at a time in every block (``num_blocks x N`` sequential network
steps, each small), an NTM runs K predictor passes over all tokens at once plus one pass of its learned denoiser;
so at batch 1 the AR flow's sequential steps dominate, while batched on a CPU its fewer FLOPs can win.

Models (all conditional on a class label, guidance 0, float32), at each geometry of :data:`GEOMETRIES`:

- ``ntm-K4-learned``: the ``digits-ntm`` preset's model (TarFlow 2 x 2 layers, trajectory predictor) sampled at
  K = 4 with the learned denoiser (``denoiser:learned`` defaults): K predictor steps + one denoiser pass;
- ``finetuned-K4-learned``: the ``digits-finetune`` model over the ``digits-flow-matching`` velocity network
  (Gaussian-posterior predictor with a scale head), K = 4, learned denoiser;
- ``ntm-K4-score``: the from-scratch NTM with score denoising (transporter inverse + one backward pass);
- ``flow-matching-euler16`` / ``-euler64``: the flow-matching velocity network, Euler with 16 / 64 steps;
- ``ar-flow-deep-shallow``: a TarFlow on ``x`` with a standard normal prior, ``num_blocks`` blocks of
  ``layers_per_block`` layers at the predictor's width, the last one deepened (``deep_layers``) until the parameter
  count matches ``ntm-K4-learned``'s (transporter + predictor + denoiser) as closely as whole layers allow;
  sampling is ``f^{-1}(z)`` with the sequential KV-cached inverse.

Weights are random: the cost of sampling depends on the architecture and the token geometry, not on the values
of the weights (no step is data-dependent: the TarFlow inverse runs its fixed N steps per block, the samplers
their fixed K / ODE steps), so no training is needed to time them. Latency is the median wall time of one batch-1
sample; throughput is ``batch / median wall`` at the given batch size. ``measure`` runs each after one warm-up.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from ntm.eval.timing import measure
from ntm.experiments.presets import PRESETS
from ntm.denoisers import LearnedDenoiserConfig, ScoreDenoiserConfig
from ntm.denoisers.learned import LearnedDenoiser
from ntm.predictors import PosteriorPredictorConfig
from ntm.samplers import AncestralConfig, EulerConfig
from ntm.spec import ModelDims
from ntm.transporters import TarFlowConfig


@dataclasses.dataclass(frozen=True)
class Geometry:
    """Images of ``channels x size x size`` cut into ``patch x patch`` tokens, ``num_classes`` labels."""

    name: str
    size: int
    channels: int
    patch: int
    num_classes: int = 10

    @property
    def dims(self) -> ModelDims:
        return ModelDims(num_tokens=(self.size // self.patch) ** 2, token_dim=self.channels * self.patch**2,
                         num_classes=self.num_classes)


GEOMETRIES = (Geometry("digits 8x8", 8, 1, 2), Geometry("rgb 32x32", 32, 3, 2))
"""16 tokens (the digits suite's geometry) and 256 tokens (32x32 RGB, patch 2: the real-time claim's regime)."""

AR_BLOCKS = 4
"""The deep-shallow AR flow: one deep block and ``AR_BLOCKS - 1`` shallow ones."""


def count_params(*modules: nn.Module) -> int:
    return sum(p.numel() for m in modules for p in m.parameters())


def deep_shallow_ar(target: int, dims: ModelDims, *, width: int, num_heads: int, shallow_layers: int = 2,
                    num_blocks: int = AR_BLOCKS) -> TarFlowConfig:
    """The deep-shallow TarFlow config whose parameter count is closest to ``target`` (whole layers of the deep
    block, at least ``shallow_layers``)."""
    base = TarFlowConfig(width=width, num_heads=num_heads, num_blocks=num_blocks, layers_per_block=shallow_layers,
                         use_condition=True)
    p0 = count_params(base.build(dims))
    per_layer = count_params(base.replace(deep_layers=shallow_layers + 1).build(dims)) - p0
    extra = max(0, round((target - p0) / per_layer))
    return base.replace(deep_layers=shallow_layers + extra)


@dataclasses.dataclass
class Candidate:
    name: str
    params: int
    sequential_steps: int
    """Network evaluations that must run one after another for one sample."""
    sample: Callable[[int], torch.Tensor]
    """``sample(n)``: ``n`` images' tokens."""
    note: str = ""


def candidates(geometry: Geometry, *, tiny: bool = False, device: torch.device | str = "cpu",
               seed: int = 0) -> list[Candidate]:
    """The models of the latency bench at ``geometry``, random weights, in eval mode on ``device``."""
    dims = geometry.dims
    torch.manual_seed(seed)
    ntm_exp, fm_exp, ft_exp = PRESETS["digits-ntm"], PRESETS["digits-flow-matching"], PRESETS["digits-finetune"]
    learned_cfg = LearnedDenoiserConfig()
    if tiny:
        small = {"width": 16, "num_heads": 2}
        tiny_transporter = ntm_exp.model.transporter.replace(**small, layers_per_block=1)
        ntm_exp = ntm_exp.replace(model=ntm_exp.model.replace(
            transporter=tiny_transporter, predictor=ntm_exp.model.predictor.replace(**small, depth=1)))
        ft_exp = ft_exp.replace(model=ft_exp.model.replace(transporter=tiny_transporter))
        fm_exp = fm_exp.replace(model=fm_exp.model.replace(
            predictor=fm_exp.model.predictor.replace(xhat=fm_exp.model.predictor.xhat.replace(**small, depth=1))))
        learned_cfg = learned_cfg.replace(**small, depth=1)
    device = torch.device(device)

    def ready(m: nn.Module) -> nn.Module:
        return m.to(device).eval().requires_grad_(False)

    ntm = ready(ntm_exp.model.build(dims))
    fm = ready(fm_exp.model.build(dims))
    ft_model = ft_exp.model.replace(predictor=PosteriorPredictorConfig(
        learned_scale=True, xhat=fm_exp.model.predictor.xhat))
    ft = ready(ft_model.build(dims))
    learned_ntm = LearnedDenoiser(learned_cfg, net=ready(learned_cfg.network(dims)))
    learned_ft = LearnedDenoiser(learned_cfg, net=ready(learned_cfg.network(dims)))
    score = ScoreDenoiserConfig().build()
    predictor_width = ntm_exp.model.predictor.width
    ar_cfg = deep_shallow_ar(count_params(ntm, learned_ntm.net), dims, width=predictor_width,
                             num_heads=ntm_exp.model.predictor.num_heads, shallow_layers=1 if tiny else 2)
    ar = ready(ar_cfg.build(dims))
    k = 4

    def labels(n: int) -> torch.Tensor:
        return torch.arange(n, device=device) % dims.num_classes

    def gen() -> torch.Generator:
        return torch.Generator(device=device).manual_seed(seed)

    def ntm_learned(model, denoiser):
        sampler = AncestralConfig(num_steps=k).build()

        def run(n: int) -> torch.Tensor:
            c = labels(n)
            out = sampler(model, n, c, generator=gen(), return_trajectory="u")
            return denoiser.denoise(model, out, c)
        return run

    def ntm_score(n: int) -> torch.Tensor:
        c = labels(n)
        out = AncestralConfig(num_steps=k).build()(ntm, n, c, generator=gen(), return_trajectory=score.trajectory_request())
        return score.denoise(ntm, out, c)

    def euler(steps: int):
        sampler = EulerConfig(num_steps=steps).build()
        return lambda n: sampler(fm, n, labels(n), generator=gen()).x

    @torch.no_grad()
    def ar_flow(n: int) -> torch.Tensor:
        z = torch.randn(n, dims.num_tokens, dims.token_dim, generator=gen(), device=device)
        return ar.inverse(z, torch.zeros(n, device=device), labels(n))

    n_ntm = count_params(ntm, learned_ntm.net)
    return [
        Candidate("ntm-K4-learned", n_ntm, k + 1, ntm_learned(ntm, learned_ntm)),
        Candidate("finetuned-K4-learned", count_params(ft, learned_ft.net), k + 1, ntm_learned(ft, learned_ft)),
        Candidate("ntm-K4-score", count_params(ntm), k + ntm_exp.model.transporter.num_blocks * dims.num_tokens + 2,
                  ntm_score, note="K steps, the transporter inverse, one forward + backward"),
        Candidate("flow-matching-euler16", count_params(fm), 16, euler(16)),
        Candidate("flow-matching-euler64", count_params(fm), 64, euler(64)),
        Candidate("ar-flow-deep-shallow", count_params(ar), ar_cfg.num_blocks * dims.num_tokens, ar_flow,
                  note=f"deep block {ar_cfg.deep_layers} layers + {ar_cfg.num_blocks - 1} shallow blocks of "
                       f"{ar_cfg.layers_per_block}, width {ar_cfg.width}"),
    ]


def run_latency(out: Path, *, batch: int = 64, repeats: int = 5, tiny: bool = False, device: str = "cpu",
                seed: int = 0, geometries: tuple[Geometry, ...] = GEOMETRIES, progress: bool = True) -> list[dict]:
    """Time every candidate at every geometry; writes ``latency.json`` and ``latency.md`` under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    for geometry in geometries:
        block = []
        for cand in candidates(geometry, tiny=tiny, device=device, seed=seed):
            one = measure(lambda cand=cand: cand.sample(1), repeats=repeats, device=device, track_memory=False)
            many = measure(lambda cand=cand: cand.sample(batch), repeats=max(1, repeats // 2), device=device, track_memory=False)
            row = {"geometry": geometry.name, "tokens": geometry.dims.num_tokens, "model": cand.name,
                   "params": cand.params, "note": cand.note, "sequential_steps": cand.sequential_steps,
                   "latency_ms": one["wall_ms"], "batch": batch,
                   "throughput_per_s": batch / (many["wall_ms"] / 1000.0)}
            block.append(row)
            if progress:
                print(f"{geometry.name}: {cand.name}: {row['latency_ms']:.2f} ms at batch 1, "
                      f"{row['throughput_per_s']:.1f} samples/s at batch {batch}", flush=True)
        ar = next(r for r in block if r["model"].startswith("ar-flow"))
        for r in block:
            r["latency_vs_ar"] = ar["latency_ms"] / r["latency_ms"]
            r["throughput_vs_ar"] = r["throughput_per_s"] / ar["throughput_per_s"]
        rows += block
    (out / "latency.json").write_text(json.dumps({"device": device, "threads": torch.get_num_threads(),
                                                  "repeats": repeats, "rows": rows}, indent=2) + "\n")
    (out / "latency.md").write_text(latency_table(rows))
    return rows


def _label(row: dict) -> str:
    return f"{row['model']} ({row['note']})" if row["note"] else row["model"]


def latency_table(rows: list[dict]) -> str:
    head = ("| geometry | tokens | model | params | sequential steps | latency, batch 1 (ms) | AR latency / this "
            "| throughput (samples/s) | vs AR |\n|---|---|---|---|---|---|---|---|---|\n")
    return head + "".join(
        f"| {r['geometry']} | {r['tokens']} | {_label(r)} | {r['params'] / 1e6:.2f} M | {r['sequential_steps']} "
        f"| {r['latency_ms']:.2f} | {r['latency_vs_ar']:.2f}x | {r['throughput_per_s']:.1f} (batch {r['batch']}) "
        f"| {r['throughput_vs_ar']:.2f}x |\n" for r in rows)
