"""The Python API: a trained model, from a run directory or an export file, as one object a notebook can use.

    import ntm
    m = ntm.load("runs/digits-ntm")      # a run directory, an export file (.safetensors) or a checkpoint of a run
    images = m.sample(16)                # (16, 1, 8, 8), images in [0, 1]
    nll = m.nll(images)                  # (16,) negative log-likelihood per example, nats

Two spaces, named by the ``space=`` argument of every method:

- ``"display"`` (the default): what you look at. Images are ``(N, C, H, W)`` float in ``[0, 1]`` (for a run on
  latents: the decoded images, of the autoencoder's image size); 2-D points are ``(N, D)`` as the data gives them.
  :meth:`Model.sample` returns this, and :meth:`Model.nll` / :meth:`Model.classify` take it (``x * 2 - 1``, then
  encoded for a run on latents).
- ``"data"``: the model's own space, what the run's data source yields: images in ``[-1, 1]``, or latents
  ``(N, c, h, w)`` at unit scale for a run on latents.

Every bad argument is a one-line :class:`ArgumentError` (a ``ValueError``) naming the argument. See docs/api.md.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from ntm.autoencoders import LatentSource
from ntm.conditioning.condition import encode_condition
from ntm.denoisers import DenoiserConfig
from ntm.eval.likelihood import class_log_likelihoods
from ntm.experiments.build import layout_for, sample as draw_samples
from ntm.experiments.api_inputs import ArgumentError, ModelInputs, Space
from ntm.experiments.config import Experiment
from ntm.experiments.runs import open_run
from ntm.experiments.exports import ExportError, LoadedRun, class_log_prior, exported_data, looks_like_export, write_export
from ntm.losses.nll import x0_bound_nats
from ntm.train.checkpoint import is_checkpoint_dir
from ntm.train.distributed import resolve_device

__all__ = ["ArgumentError", "ExportError", "Model", "load"]



def load(path: str | os.PathLike[str], *, ema: bool = True, device: str | torch.device = "auto",
         checkpoint: str | os.PathLike[str] | None = None) -> "Model":
    """A trained model from ``path``: a run directory (its newest checkpoint), an export file written by
    ``ntm export`` / :meth:`Model.export` (no run directory or data needed), a checkpoint file or directory
    inside a run's ``checkpoints/``, or a run's ``config.json``.

    ``ema``: the EMA weights (default; a checkpoint without an EMA gives its raw weights) or the raw training
    weights. ``device``: ``"auto"`` (CUDA when available, else the CPU), ``"cpu"``, ``"cuda"``, ``"cuda:1"``...
    ``checkpoint``: a specific checkpoint (or export) of the run directory ``path``.

    Loading leaves the global random state as it was. Errors are one line naming the file.
    """
    path = Path(path).expanduser()
    weights = "ema" if ema else "raw"
    with torch.random.fork_rng(devices=[]):  # building the model draws its (overwritten) initial weights
        if checkpoint is not None:
            loaded = open_run(path, Path(checkpoint).expanduser(), weights)
        elif path.is_dir() and (path / "config.json").is_file():
            loaded = open_run(path, None, weights)
        elif looks_like_export(path):
            loaded = open_run(None, path, weights)
        elif path.name == "config.json" and path.is_file():
            loaded = open_run(path.parent, None, weights)  # the run of a config file
        elif (is_checkpoint_dir(path) or path.is_file()) and (path.parent.parent / "config.json").is_file():
            loaded = open_run(path.parent.parent, path, weights)  # <run>/checkpoints/step_*
        elif not path.exists():
            raise FileNotFoundError(f"load: {path} does not exist")
        elif path.is_dir():
            raise ArgumentError(f"load: {path} is neither a run directory (it has no config.json) nor an export file")
        else:
            loaded = open_run(None, path, weights)  # the one-line error of a file that is no export
    return Model(loaded, device=device)


def _resolve(device: str | torch.device) -> torch.device:
    if isinstance(device, str) and device == "auto":
        return resolve_device("auto")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ArgumentError(f"device={device!r}: {e}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ArgumentError(f"device={str(device)!r}: CUDA is not available on this machine (use 'cpu' or 'auto')")
    return device


class Model(ModelInputs):
    """A trained NTM with its experiment and data statistics: sample, score, classify, export. Build it with
    :func:`load`. Attributes: see the properties below; ``network`` is the ``torch.nn.Module`` itself."""

    def __init__(self, loaded: LoadedRun, *, device: str | torch.device = "cpu") -> None:
        self._loaded = loaded
        self._prior: Tensor | None = None
        self.to(device)

    # -- what it is ------------------------------------------------------------------------------------------------
    @property
    def experiment(self) -> Experiment:
        """The run's experiment config (:class:`ntm.experiments.config.Experiment`)."""
        return self._loaded.experiment

    config = experiment

    @property
    def name(self) -> str:
        return self.experiment.name

    @property
    def network(self) -> torch.nn.Module:
        """The NTM (``torch.nn.Module``, in eval mode) with the loaded weights."""
        return self._loaded.model

    @property
    def data(self):
        """The run's data source; for an export, its statistics only (it holds no examples)."""
        return self._loaded.data

    @property
    def source(self) -> Path:
        """The run directory or the export file the model came from."""
        return self._loaded.source

    @property
    def step(self) -> int:
        """The training step of the weights."""
        return self._loaded.step

    @property
    def weights(self) -> str:
        """``"ema"`` or ``"raw"``: which weights were loaded."""
        return self._loaded.weights

    @property
    def is_export(self) -> bool:
        return self._loaded.is_export

    @property
    def device(self) -> torch.device:
        return next(self.network.parameters()).device

    @property
    def conditioning(self) -> Literal["none", "labels", "captions"]:
        """What the model is conditioned on: nothing, class labels (``labels=``) or captions (``prompts=``)."""
        if getattr(self.network, "condition_encoder", None) is not None:
            return "captions"
        return "labels" if self.network.dims.num_classes else "none"

    @property
    def num_classes(self) -> int:
        """Number of class labels (0: not class-conditional)."""
        return int(self.network.dims.num_classes) if self.conditioning == "labels" else 0

    @property
    def class_names(self) -> list[str] | None:
        """The data's class names where it has them (e.g. an image folder's subfolders), else ``None``."""
        exported = exported_data(self.data)
        names = exported.class_names if exported is not None else \
            getattr(getattr(self.data, "inner", self.data), "class_names", None) or self.data.stats().get("class_names")
        return None if not names else [str(n) for n in names]

    @property
    def kind(self) -> str:
        """``"images"`` or ``"points"``."""
        return self.data.spec.kind

    @property
    def is_latent(self) -> bool:
        """Whether the model runs in an autoencoder's latent space (samples are decoded for display)."""
        return self.data.spec.encoded_by is not None

    @property
    def image_shape(self) -> tuple[int, ...]:
        """The shape of one example in display space: what :meth:`sample` returns and :meth:`nll` takes, e.g.
        ``(1, 8, 8)`` (decoded images for a run on latents; ``(D,)`` for points)."""
        spec = self.data.spec
        return tuple(spec.image_shape or spec.shape) if self.is_latent else tuple(spec.shape)

    @property
    def data_shape(self) -> tuple[int, ...]:
        """The shape of one example in the model's data space (``space="data"``; latents for a run on latents)."""
        return tuple(self.data.spec.shape)

    @property
    def dims(self) -> int:
        """``D``: the values per example in data space (what bits per dimension divide by)."""
        return int(np.prod(self.data_shape))

    @property
    def steps(self) -> tuple[int, ...]:
        """The step counts K the model was trained for."""
        return tuple(self.experiment.model.process.steps)

    def __repr__(self) -> str:
        cond = {"none": "unconditional", "labels": f"class-conditional ({self.num_classes} classes)",
                "captions": "caption-conditioned"}[self.conditioning]
        space = f"latents {self.data_shape} of images {self.image_shape}" if self.is_latent else \
            f"{self.kind} {self.image_shape}"
        return (f"ntm.Model({self.name!r}, step {self.step}, {self.weights} weights, {cond}, {space}, K={self.steps}, "
                f"{self.device}, from {self.source})")

    def to(self, device: str | torch.device) -> "Model":
        """Move the model (and a run's autoencoder) to ``device``; returns ``self``."""
        device = _resolve(device)
        self.network.to(device)
        if isinstance(self.data, LatentSource):
            self.data.autoencoder.to(device)
        return self

    # -- spaces ----------------------------------------------------------------------------------------------------
    def to_display(self, x: Tensor) -> Tensor:
        """Data-space tensors -> display space (images in ``[0, 1]``, decoded for a run on latents)."""
        return self.data.to_display(self._tensor(x, "x", "data"))

    def to_data(self, x: Any) -> Tensor:
        """Display-space tensors (images in ``[0, 1]``) -> the model's data space (``[-1, 1]``, or latents)."""
        return self._model_space(x, "x", "display")

    def sample(
        self,
        n: int | None = None,
        *,
        labels: Any = None,
        prompts: str | Sequence[str] | None = None,
        steps: int | None = None,
        guidance: float | None = None,
        temperature: float | None = None,
        denoiser: str | DenoiserConfig | bool | None = None,
        seed: int | None = None,
        space: Space = "display",
        batch_size: int | None = None,
    ) -> Tensor:
        """Draw samples: ``(n, *image_shape)`` float32 on the CPU, images in ``[0, 1]`` (``space="data"``: the
        model's own space, ``(n, *data_shape)``).

        ``n``: how many (default 16; with ``labels``/``prompts``: one per label or prompt, or ``n`` a multiple of
        their count, each repeated). ``labels``: class labels (an int, a list, a tensor) of a class-conditional
        run; ``prompts``: a caption or a list of captions of a caption-conditioned run (``""`` is the null
        condition). Without either, a conditional model samples its null (unconditional) condition.
        ``steps`` (K), ``guidance`` (classifier-free guidance weight), ``temperature``: the run's sampler settings
        by default. ``denoiser``: the run's by default; ``"none"``/``False``, ``"score"``, ``"learned"`` (the
        run's distilled one, or the one in an export), or a denoiser config. ``seed``: default the run's
        ``eval.seed``, so two calls give the same samples. ``guidance`` and ``temperature`` are checked as the
        sampler config checks them (finite; ``0 <= guidance <= 100``, ``0 < temperature <= 100``).
        ``batch_size``: most samples per sampler call (default: the run's ``eval.sample_batch``): any ``n`` is
        drawn in chunks of this many (samples beyond the first chunk depend on it; see
        :func:`ntm.experiments.build.sample`).
        """
        n, labels, captions = self._conditions(n, labels, prompts, default_n=16)
        if space not in ("display", "data"):
            raise ArgumentError(f"space={space!r}: choose 'display' (images in [0, 1]) or 'data' (the model's space)")
        sampler = self._sampler(steps, guidance, temperature)
        denoise, config = self._denoiser(denoiser)
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))):
            raise ArgumentError(f"seed: expected an int, got {seed!r}")
        if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer))
                                       or batch_size < 1):
            raise ArgumentError(f"batch_size: expected a positive int, got {batch_size!r}")
        x = draw_samples(self.experiment, self.network, self.data, n, labels=labels, captions=captions,
                         sampler=sampler, denoise=denoise, denoiser=config, seed=None if seed is None else int(seed),
                         batch_size=None if batch_size is None else int(batch_size))
        return x if space == "data" else self.data.to_display(x).float().cpu()

    # -- likelihood ------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def nll(
        self,
        x: Any,
        labels: Any = None,
        *,
        prompts: str | Sequence[str] | None = None,
        steps: int | None = None,
        kind: Literal["trajectory", "bound"] = "trajectory",
        bits_per_dim: bool = False,
        seed: int | None = None,
        space: Space = "display",
        batch_size: int = 500,
    ) -> Tensor:
        """Negative log-likelihood per example: ``(N,)`` float64 nats (``bits_per_dim=True``: bits per dimension).

        ``x``: ``(N, *image_shape)`` images in ``[0, 1]`` (what :meth:`sample` returns; a single example without
        the batch axis is accepted), or ``space="data"``: ``(N, *data_shape)`` in the model's space.
        ``labels`` / ``prompts``: the condition of each example (one per example, or one for all); without them a
        conditional model scores its null (unconditional) condition.
        ``kind="trajectory"`` (default): the exact NLL of one forward trajectory ``x_{t_0} .. x_{t_K}`` of each
        example, ``sum_k l_k`` (bits per dim divide by ``K * D``: ``ntm eval``'s ``nll_traj_bpd``);
        ``kind="bound"``: the upper bound on ``-log p(x_{t_0})`` (divided by ``D``: ``bound_bpd``). ``D`` is
        :attr:`dims` (the latent's size for a run on latents: NLLs of latents). ``steps``: K (default: the largest
        the run evaluates). ``seed`` (default the run's ``eval.seed``) seeds the forward trajectories as ``ntm
        eval`` does, so on the held-out split the mean equals its numbers.
        """
        if kind not in ("trajectory", "bound"):
            raise ArgumentError(f"kind={kind!r}: choose 'trajectory' or 'bound'")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ArgumentError(f"batch_size: expected a positive int, got {batch_size!r}")
        data_x = self._model_space(x, "x", space)
        n = data_x.shape[0]
        _, labels, captions = self._conditions(n, labels, prompts, default_n=None, scoring=True)
        k = self._score_steps(steps)
        cond = self._condition_inputs(labels, captions, n)
        model, device = self.network, self.device
        layout = layout_for(self.experiment, self.data)
        gen = torch.Generator(device=device).manual_seed((self.experiment.eval.seed if seed is None else int(seed)) + k)
        out = []
        for i in range(0, n, batch_size):
            tokens = layout.to_tokens(data_x[i:i + batch_size].to(device))
            c = None if cond is None else cond[i:i + batch_size].to(device)
            c = encode_condition(model, c, tokens.shape[0])
            step_nlls, trajectory, times = model.trajectory_nll(tokens, k, c, gen)
            value = step_nlls.sum(-1) if kind == "trajectory" else x0_bound_nats(step_nlls, trajectory, times)
            out.append(value.double().cpu())
        nats = torch.cat(out)
        if not bits_per_dim:
            return nats
        return nats / ((k if kind == "trajectory" else 1) * layout.dim * math.log(2))

    def bits_per_dim(self, x: Any, labels: Any = None, **kwargs: Any) -> Tensor:
        """:meth:`nll` in bits per dimension (same arguments)."""
        return self.nll(x, labels, bits_per_dim=True, **kwargs)

    # -- classification --------------------------------------------------------------------------------------------
    def log_prior(self) -> Tensor:
        """``(C,)`` log class prior of the training labels (``ntm eval --classify``'s; an export stores it)."""
        self._need_classes("log_prior")
        if self._prior is None:
            self._prior = class_log_prior(self.data, self.num_classes)
        return self._prior.clone()

    def _need_classes(self, what: str) -> None:
        if self.conditioning != "labels":
            kind = "captions" if self.conditioning == "captions" else "nothing"
            raise ArgumentError(f"{what}: needs a class-conditional run; {self.name} is conditioned on {kind}, so "
                                "Bayes' rule has no p(x | class) to compare")

    def class_probabilities(
        self,
        x: Any,
        *,
        steps: int | None = None,
        trajectories: int = 4,
        score: Literal["traj", "iw_bound"] = "traj",
        prior: bool = True,
        seed: int | None = None,
        space: Space = "display",
    ) -> Tensor:
        """``(N, C)`` posterior class probabilities by Bayes' rule, ``softmax_c(log p(x | c) + log p(c))``.

        ``log p(x | c)``: the trajectory log-likelihood averaged over ``trajectories`` forward trajectories per
        example, the same ones under every class (``score="traj"``), or the importance-weighted ``x_{t_0}`` bound
        (``score="iw_bound"``), as ``ntm eval --classify``. ``prior``: the training labels' class prior (False:
        uniform). ``x``, ``steps``, ``seed``, ``space``: as for :meth:`nll`.
        """
        self._need_classes("classify")
        if score not in ("traj", "iw_bound"):
            raise ArgumentError(f"score={score!r}: choose 'traj' or 'iw_bound'")
        if isinstance(trajectories, bool) or not isinstance(trajectories, int) or trajectories < 1:
            raise ArgumentError(f"trajectories: expected a positive int, got {trajectories!r}")
        data_x = self._model_space(x, "x", space)
        k = self._score_steps(steps)
        chunks = (data_x[i:i + 256] for i in range(0, data_x.shape[0], 256))  # as ntm eval --classify
        loglik = class_log_likelihoods(self.network, chunks, layout_for(self.experiment, self.data), k,
                                       trajectories=trajectories,
                                       seed=self.experiment.eval.seed if seed is None else int(seed))[score]
        logits = loglik[:, :-1]
        if prior:
            logits = logits + self.log_prior().to(logits.dtype)
        return torch.softmax(logits, dim=1)

    def classify(self, x: Any, **kwargs: Any) -> Tensor:
        """``(N,)`` int64 predicted class per example: the argmax of :meth:`class_probabilities` (same arguments)."""
        return self.class_probabilities(x, **kwargs).argmax(dim=1)

    # -- export ----------------------------------------------------------------------------------------------------
    def export(self, path: str | os.PathLike[str]) -> Path:
        """Write this model as one export file (``.safetensors``, see ``ntm export``) and return its path."""
        return write_export(Path(path).expanduser(), self._loaded).path
