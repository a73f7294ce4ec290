"""The checks and conversions behind :class:`ntm.experiments.api.Model`'s arguments: tensors in either space,
labels, prompts, the number of samples they ask for, step counts, sampler settings and denoisers. Every bad
argument is a one-line :class:`ArgumentError` naming it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from ntm.denoisers import DENOISERS, DenoiserConfig, LearnedDenoiserConfig
from ntm.experiments.build import conditioner_of
from ntm.experiments.exports import display_kind
from ntm.experiments.runs import denoiser_for, sampler_for
from ntm.registry import ConfigError, RegistryError

Space = Literal["display", "data"]
_SAMPLER_ARGS = {"sampler.num_steps": "steps", "sampler.guidance": "guidance", "sampler.temperature": "temperature"}


class ArgumentError(ValueError):
    """A bad argument to the Python API; the message is one line and names the argument."""


class ModelInputs:
    """What :class:`~ntm.experiments.api.Model` does with its arguments before it samples or scores (a base class:
    it reads the model's properties)."""

    def _display_kind(self, what: str) -> str:
        kind = display_kind(self.data)
        if kind is None:
            raise ArgumentError(f"{what}: this run's data source shows samples its own way, so display-space input "
                                "cannot be mapped back; pass space='data'")
        return kind

    def _tensor(self, x: Any, what: str, space: str) -> Tensor:
        """``x`` as a float32 CPU tensor ``(N, *shape)`` of ``space``, checked (one line naming ``what``)."""
        if space not in ("display", "data"):
            raise ArgumentError(f"space={space!r}: choose 'display' (images in [0, 1]) or 'data' (the model's space)")
        if not isinstance(x, Tensor):
            try:
                x = torch.as_tensor(np.asarray(x))
            except (TypeError, ValueError) as e:
                raise ArgumentError(f"{what}: expected a tensor or array, got {type(x).__name__} ({e})") from None
        shape = self.image_shape if space == "display" else self.data_shape
        where = "images in [0, 1]" if space == "display" and self.kind == "images" else f"{space} space"
        if not x.is_floating_point():
            hint = " (divide uint8 images by 255)" if x.dtype == torch.uint8 else ""
            raise ArgumentError(f"{what}: expected a float tensor ({where}), got dtype {x.dtype}{hint}")
        if tuple(x.shape) == shape:
            x = x[None]
        if x.ndim != len(shape) + 1 or tuple(x.shape[1:]) != shape or x.shape[0] == 0:
            raise ArgumentError(f"{what}: expected shape (N, {', '.join(map(str, shape))}) ({where}), got "
                                f"{tuple(x.shape)}")
        x = x.detach().to("cpu", torch.float32)
        if not torch.isfinite(x).all():
            raise ArgumentError(f"{what}: holds non-finite values")
        if space == "display" and self.kind == "images" and self._display_kind(what) == "unit":
            lo, hi = x.min().item(), x.max().item()
            if lo < -1e-4 or hi > 1 + 1e-4:
                raise ArgumentError(f"{what}: display-space images are in [0, 1], these span [{lo:.3g}, {hi:.3g}] "
                                    "(pass space='data' for tensors in the data's [-1, 1])")
        return x

    def _model_space(self, x: Any, what: str, space: str) -> Tensor:
        x = self._tensor(x, what, space)
        if space == "data":
            return x
        if self._display_kind(what) == "unit":
            x = x * 2 - 1
        encode = getattr(self.data, "encode", None) if self.is_latent else None
        return encode(x) if encode is not None else x

    # -- conditions ------------------------------------------------------------------------------------------------
    def _labels(self, labels: Any, what: str = "labels") -> Tensor:
        if self.conditioning == "none":
            raise ArgumentError(f"{what}: {self.name} is unconditional (no class labels); drop {what}")
        if self.conditioning == "captions":
            raise ArgumentError(f"{what}: {self.name} is conditioned on captions, not class labels; pass prompts=")
        try:
            t = labels if isinstance(labels, Tensor) else torch.as_tensor(np.asarray(labels))
        except (TypeError, ValueError) as e:
            raise ArgumentError(f"{what}: expected class labels (ints), got {type(labels).__name__} ({e})") from None
        if t.dtype == torch.bool or t.is_floating_point() or t.is_complex():
            raise ArgumentError(f"{what}: expected integer class labels, got dtype {t.dtype}")
        t = t.reshape(-1).to("cpu", torch.long)
        if t.numel() == 0:
            raise ArgumentError(f"{what}: no labels given")
        bad = t[(t < 0) | (t >= self.num_classes)]
        if bad.numel():
            raise ArgumentError(f"{what}: {int(bad[0])} is out of range for {self.name}'s {self.num_classes} classes "
                                f"(0..{self.num_classes - 1})")
        return t

    def _prompts(self, prompts: Any, what: str = "prompts") -> list[str]:
        if self.conditioning != "captions":
            kind = "class labels (pass labels=)" if self.conditioning == "labels" else "nothing (it is unconditional)"
            raise ArgumentError(f"{what}: {self.name} is not caption-conditioned: it is conditioned on {kind}")
        items = [prompts] if isinstance(prompts, str) else list(prompts) if isinstance(prompts, Sequence) else None
        if not items or not all(isinstance(p, str) for p in items):
            raise ArgumentError(f"{what}: expected a string or a list of strings, got {prompts!r:.80}")
        return items

    @staticmethod
    def _fit(n: int | None, values: list | Tensor, what: str, *, scoring: bool = False) -> list | Tensor:
        """``values`` for ``n`` examples: all of them (``n`` None), or each repeated ``n / len`` times (scoring:
        one per example, or one for all)."""
        count = len(values)
        if n is None or n == count:
            return values
        if scoring and count != 1:
            raise ArgumentError(f"{what}: {count} given for {n} examples (give one per example, or one for all)")
        if n % count:
            raise ArgumentError(f"n={n} is not a multiple of the {count} {what} given")
        per = n // count
        if isinstance(values, Tensor):
            return values.repeat_interleave(per)
        return [v for v in values for _ in range(per)]

    def _conditions(self, n: int | None, labels: Any, prompts: Any, *, default_n: int | None,
                    scoring: bool = False) -> tuple[int, Any, Any]:
        """``(n, labels tensor | None, captions | None)``."""
        if n is not None and (isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1):
            raise ArgumentError(f"n: expected a positive number of examples, got {n!r}")
        n = None if n is None else int(n)
        if labels is not None and prompts is not None:
            raise ArgumentError("labels and prompts exclude each other")
        if labels is not None:
            t = self._fit(n, self._labels(labels), "labels", scoring=scoring)
            return len(t), t, None
        if prompts is not None:
            captions = self._fit(n, self._prompts(prompts), "prompts", scoring=scoring)
            return len(captions), None, captions
        n = default_n if n is None else n
        return n, None, None

    def _condition_inputs(self, labels: Tensor | None, captions: list[str] | None, n: int) -> Any:
        """The condition input of ``n`` scored examples, as held-out scoring feeds it (no dropout)."""
        if labels is None and captions is None:
            return None
        raw = labels if labels is not None else captions
        return conditioner_of(self.experiment.conditioner).inputs(raw, self.network.dims.num_classes)

    # -- settings --------------------------------------------------------------------------------------------------
    def _check_steps(self, steps: int | None) -> int | None:
        if steps is None:
            return None
        if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
            raise ArgumentError(f"steps: expected a positive number of steps K, got {steps!r}")
        if not self.experiment.model.process.schedule.build().supports(int(steps)):
            raise ArgumentError(f"steps={steps}: the schedule does not define K = {steps} (trained: {list(self.steps)})")
        return int(steps)

    def _score_steps(self, steps: int | None) -> int:
        steps = self._check_steps(steps)
        return steps if steps is not None else max(self.experiment.eval.steps or self.steps)

    def _sampler(self, steps: int | None, guidance: float | None, temperature: float | None):
        steps = self._check_steps(steps)
        try:
            return sampler_for(self.experiment, num_steps=steps, guidance=guidance, temperature=temperature)
        except ConfigError as e:
            path, message = e.problems[0]
            arg = _SAMPLER_ARGS.get(path, path)
            value = {"steps": steps, "guidance": guidance, "temperature": temperature}.get(arg)
            raise ArgumentError(f"{arg}={value!r}: {message}" if value is not None else f"{arg}: {message}") from None

    def _denoiser(self, denoiser: str | DenoiserConfig | bool | None) -> tuple[bool, DenoiserConfig | None]:
        """``(denoise, config)`` for :func:`ntm.experiments.build.sample`."""
        if denoiser is False or denoiser == "none":
            return False, None
        if denoiser is None or denoiser is True:
            config = self.experiment.denoiser
        elif isinstance(denoiser, str):
            try:
                entry = DENOISERS.get(denoiser)
            except RegistryError as e:
                raise ArgumentError(f"denoiser={denoiser!r}: {str(e).splitlines()[0]}") from None
            # the run's own config when it names the same variant, else that variant's defaults (as ntm sample)
            run = self.experiment.denoiser
            config = run if type(run) is entry.config_cls else entry.config_cls()
        elif isinstance(denoiser, DenoiserConfig):
            config = denoiser
        else:
            raise ArgumentError(f"denoiser: expected a name (none, score, learned), a denoiser config or False, got "
                                f"{type(denoiser).__name__}")
        embedded = self._loaded.denoiser  # an export's distilled denoiser, read with the model
        if embedded is not None and self.is_export and type(config) is LearnedDenoiserConfig and config.weights is None:
            return True, embedded
        return True, denoiser_for(self.experiment, self.source, config)

    # -- sampling --------------------------------------------------------------------------------------------------
