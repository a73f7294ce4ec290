"""What the exact likelihood buys: Bayes-rule classification and out-of-distribution scores.

**Per-class log-likelihoods.** For an image ``x`` and class ``c`` the score is
the model's trajectory log-likelihood, ``-sum_k NLL_k(x | c)`` (nats), averaged
over ``trajectories`` forward trajectories per image. The same trajectories
(common random numbers) are scored under every class and under the null
condition, so class differences are not noise of the forward process. The
trajectory log-likelihood and the ``x_{t_0}`` bound differ by the forward
process's own log-density, which does not depend on the class: for one
trajectory they rank classes identically. The alternative here is therefore the
*importance-weighted* bound ``log mean_s exp(-bound_s)`` over the trajectories
(tighter than their mean, and a different classifier): ``score="iw-bound"``.

**Classification** (:func:`classify`): ``argmax_c log p(x | c) + log p(c)``
with the class prior from the training labels; the posterior
``softmax_c(log p(x | c) + log p(c))`` gives the calibration (expected
calibration error over 15 equal-width confidence bins).

**Out-of-distribution scores** (:func:`ood_scores`; higher = more anomalous):
``nll`` (unconditional bits per dimension), ``typicality`` (``|nll - mean nll
of training data|``: an atypically *high* likelihood is flagged too) and
``likelihood-ratio`` (``log p(x) - max_c log p(x | c)``: in-distribution images
gain from their class, out-of-distribution ones little) and, for class-conditional
models, ``class-marginal`` (the NLL of the class mixture ``log sum_c p(c) p(x | c)``
in bits per dimension: the same marginal as ``nll`` in exact arithmetic, but read
from the conditional model, which trains on every example, where the null
condition trains on the dropped-out fraction only). AUROC against the held-out
split for each score.
"""

from __future__ import annotations

import math
from typing import Iterable

import numpy as np
import torch
from torch import Tensor

from ntm.data.base import DataError, DataSource
from ntm.losses.nll import x0_bound_nats
from ntm.nn.tokens import TokenLayout

ECE_BINS = 15


@torch.no_grad()
def class_log_likelihoods(
    model: torch.nn.Module, images: Iterable[Tensor], layout: TokenLayout, num_steps: int, *,
    trajectories: int = 4, seed: int = 0, with_classes: bool = True,
) -> dict[str, Tensor]:
    """Per-image log-likelihoods (nats) of every class and of the null condition.

    ``images``: batches ``(B, *shape)`` as the model's data source gives them. Returns ``{"traj": (N, C + 1),
    "iw_bound": (N, C + 1)}``, column ``C`` the null (unconditional) condition; ``with_classes=False`` scores the
    null condition only (``(N, 1)``). ``traj`` is the mean over ``trajectories`` of ``-sum_k NLL_k``; ``iw_bound``
    is ``log mean exp(-bound)`` over them."""
    if trajectories < 1:
        raise ValueError(f"trajectories must be >= 1, got {trajectories}")
    num_classes = model.dims.num_classes
    device = next(model.parameters()).device
    conds = list(range(num_classes)) if with_classes else []
    traj_all, iw_all = [], []
    offset = 0
    for x in images:
        tokens = layout.to_tokens(x.to(device))
        b = tokens.shape[0]
        traj = torch.zeros(b, len(conds) + 1, dtype=torch.float64)
        bounds = torch.zeros(trajectories, b, len(conds) + 1, dtype=torch.float64)
        for s in range(trajectories):
            gen = torch.Generator(device=device).manual_seed(seed * 1_000_003 + s * 10_007 + offset)
            times = model.process.times(num_steps, device=device, dtype=tokens.dtype)
            trajectory = model.process.sample_trajectory(tokens, times, gen)
            for j, c in enumerate([*conds, None]):
                cond = model.null_condition(b, device) if c is None else torch.full((b,), c, device=device)
                step_nlls = model.step_nlls(trajectory, times, cond)
                traj[:, j] += -step_nlls.sum(-1).double().cpu() / trajectories
                bounds[s, :, j] = x0_bound_nats(step_nlls, trajectory, times).double().cpu()
        traj_all.append(traj)
        iw_all.append(torch.logsumexp(-bounds, dim=0) - math.log(trajectories))
        offset += b
    if not traj_all:
        raise DataError("no images to score")
    return {"traj": torch.cat(traj_all), "iw_bound": torch.cat(iw_all)}


def expected_calibration_error(probs: Tensor, labels: Tensor, bins: int = ECE_BINS) -> float:
    """ECE of the top-class confidence over ``bins`` equal-width bins (weighted by the bin's share of examples)."""
    confidence, predicted = probs.max(dim=1)
    correct = (predicted == labels).double()
    edges = torch.linspace(0, 1, bins + 1, dtype=probs.dtype)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        inside = (confidence > lo) & (confidence <= hi)
        if inside.any():
            ece += inside.double().mean().item() * abs(correct[inside].mean().item() - confidence[inside].double().mean().item())
    return ece


def classify(loglik: Tensor, labels: Tensor, log_prior: Tensor) -> dict[str, float]:
    """Accuracy, ECE and mean log-loss of the Bayes classifier from ``loglik (N, C)`` (class columns only)."""
    logits = loglik + log_prior.to(loglik.dtype)
    probs = torch.softmax(logits, dim=1)
    accuracy = (logits.argmax(dim=1) == labels).double().mean().item()
    log_loss = -torch.log_softmax(logits, dim=1).gather(1, labels[:, None]).mean().item()
    return {"accuracy": accuracy, "ece": expected_calibration_error(probs, labels), "log_loss": log_loss,
            "examples": int(labels.numel())}


def class_prior(data: DataSource, num_classes: int, max_batches: int = 50) -> Tensor:
    """Log class frequencies of the training stream's first ``max_batches`` batches (uniform when unlabelled)."""
    counts = torch.zeros(num_classes, dtype=torch.float64)
    for i, batch in enumerate(data.train_batches(256, seed=0)):
        if batch.label is None or i >= max_batches:
            break
        counts += torch.bincount(batch.label, minlength=num_classes)[:num_classes].double()
    if counts.sum() == 0:
        counts += 1
    return torch.log((counts + 1) / (counts + 1).sum())


def auroc(in_scores: Tensor, out_scores: Tensor) -> float:
    """Area under the ROC curve of telling ``out`` (positive) from ``in`` by the score (ties count half)."""
    from sklearn.metrics import roc_auc_score

    y = np.r_[np.zeros(len(in_scores)), np.ones(len(out_scores))]
    return float(roc_auc_score(y, np.r_[in_scores.numpy(), out_scores.numpy()]))


def nll_bits(loglik: Tensor, dims: int) -> Tensor:
    """Unconditional NLL in bits per dimension and step (``dims = K D``, as ``nll_traj_bpd``) from the null column."""
    return -loglik[:, -1] / (dims * math.log(2))


def ood_scores(loglik: Tensor, dims: int, train_nll_bpd: float, log_prior: Tensor | None = None) -> dict[str, Tensor]:
    """The scores from ``loglik (N, C + 1)`` (null last; ``dims = K D``): higher means more anomalous.
    ``log_prior (C,)`` weighs the classes of ``class-marginal`` (uniform when not given)."""
    null = loglik[:, -1]
    nll_bpd = nll_bits(loglik, dims)
    scores = {"nll": nll_bpd, "typicality": (nll_bpd - train_nll_bpd).abs()}
    if loglik.shape[1] > 1:
        per_class = loglik[:, :-1]
        scores["likelihood-ratio"] = null - per_class.max(dim=1).values
        if log_prior is None:
            log_prior = torch.full((per_class.shape[1],), -math.log(per_class.shape[1]), dtype=per_class.dtype)
        marginal = torch.logsumexp(per_class + log_prior.to(per_class), dim=1)
        scores["class-marginal"] = -marginal / (dims * math.log(2))
    return scores


def ood_sets(images: Tensor, seed: int = 0, levels: int | None = None) -> dict[str, Tensor]:
    """Out-of-distribution counterparts of held-out ``images`` ``(N, C, H, W)`` in ``[-1, 1]``, as many of each:
    ``noise`` (uniform, on the same ``levels`` grid as the data when given), ``flipped`` (upside down),
    ``inverted`` (``-x``) and ``shapes`` (procedural shapes scenes rendered grey at the images' size, on the grid)."""
    from ntm.data.shapes import ShapesConfig

    n, c, h, w = images.shape
    gen = torch.Generator().manual_seed(seed)
    noise = torch.rand(images.shape, generator=gen) * 2 - 1

    def on_grid(x: Tensor) -> Tensor:
        if levels is None:
            return x
        return torch.round((x + 1) / 2 * (levels - 1)) / (levels - 1) * 2 - 1

    scenes = ShapesConfig(image_size=16 if max(h, w) <= 16 else 32 if max(h, w) <= 32 else 64,
                          eval_size=max(n, 1)).build()
    rendered = torch.cat([b.x for b in scenes.eval_batches(256, max_examples=n)])
    grey = torch.nn.functional.interpolate(rendered.mean(dim=1, keepdim=True), size=(h, w), mode="area")
    return {"noise": on_grid(noise), "flipped": images.flip(-2), "inverted": -images,
            "shapes": on_grid(grey.expand(-1, c, -1, -1).contiguous())}


__all__ = ["auroc", "class_log_likelihoods", "class_prior", "classify", "expected_calibration_error", "nll_bits", "ood_scores",
           "ood_sets"]
