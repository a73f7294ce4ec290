"""The text-to-image suites of ``ntm bench shapes`` and ``ntm bench latent``: caption-conditioned models on
``data:shapes``, sized to one parameter count (shapes) or trained for one wall time (latent), scored by the
shapes-eval judge."""

from __future__ import annotations

from ntm.data.base import DataSource
from ntm.denoisers import NoDenoiserConfig
from ntm.experiments.bench.suites import (BenchModel, EvalPoint, Suite, _ode_point, _variant, _with_guidance,
                                          generative_params)
from ntm.experiments.config import Experiment
from ntm.experiments.presets import PRESETS
from ntm.losses import FlowMatchingConfig
from ntm.predictors import PosteriorPredictorConfig, VelocityTransformerConfig
from ntm.samplers import EulerConfig
from ntm.transporters import IdentityConfig


def closest_in_size(target: int, options: list[Experiment], data: DataSource, what: str,
                    tolerance: float | None = 0.1) -> tuple[Experiment, int]:
    """The option whose :func:`generative_params` is closest to ``target``, and its count; with ``tolerance``, a
    ``ValueError`` when even that one is further than ``tolerance * target`` away."""
    sized = [(abs(n - target), n, exp) for exp in options for n in (generative_params(exp, data),)]
    _, n, best = min(sized, key=lambda t: t[0])
    if tolerance is not None and abs(n - target) > tolerance * target:
        raise ValueError(f"{what}: no option within {tolerance:.0%} of {target} parameters (closest {n})")
    return best, n


SHAPES_PROMPTS = (
    "a star", "a red circle", "a square and a triangle", "three green triangles",
    "an orange cross to the left of a blue circle", "a blue square and a yellow star",
)
"""The captions of the shapes bench's prompt figure (one per GenEval category; data:shapes grammar)."""


def shapes_suite(train_steps: int = 1200, seed: int = 0, tiny: bool = False, num_samples: int = 250,
                 finetune_steps: int | None = None, distill_steps: int | None = None,
                 teacher_steps: int | None = None, guidance: float = 1.5, image_size: int = 16) -> Suite:
    """Text-to-image on ``data:shapes`` at ``image_size`` (16: 16 tokens of 4x4 pixels, which is what lets four
    models train in an hour on 2 CPU cores; the judge is trusted there too, >= 0.956 per category), all models from
    the ``shapes-t2i-ntm`` preset with its text encoder, training budget (``train_steps`` at its batch size) and
    seed, sized to the NTM's parameter count (encoder excluded, within 10 %):

    - ``ntm``: the preset, K = 4 (its score denoiser);
    - ``gaussian``: no transporter, the trajectory predictor deepened to the NTM's size, K = 4;
    - ``flow-matching``: a velocity transformer of the NTM's size on ``x``, Euler at 4 / 16 / 64 steps;
    - ``ar-flow``: one autoregressive flow in the deep-shallow form (TarFlow at the predictor's width, 4 blocks:
      3 shallow ones of 2 layers, or of 1 where 2 are already too many, and the block nearest the prior deepened
      to the size), trained as an NTM with K = 1 (a depth-1 predictor gives the prior of ``x_{t_0}``), score
      denoised.

    Every point is scored unguided and at ``guidance`` (``-w<weight>`` rows), on ``num_samples`` captions of
    each held-out split (seen and unseen colour-shape pairs), with a domain FID from a shapes classifier."""
    if finetune_steps is not None or distill_steps is not None or teacher_steps is not None:
        from ntm.experiments.core import UsageError

        raise UsageError("the shapes suite trains every model from scratch on one budget: drop --finetune-steps, "
                         "--distill-steps and --teacher-steps")
    base = PRESETS["shapes-t2i-ntm"]
    base = base.replace(data=base.data.replace(image_size=image_size))
    if tiny:  # 16-pixel scenes, few of them: a smoke test renders little
        base = base.replace(data=base.data.replace(image_size=16, train_size=256, eval_size=32))
    data = base.data.build()
    v = lambda name, steps, **u: _variant(base, f"shapes-{name}", steps=steps, train_steps=train_steps,  # noqa: E731
                                          seed=seed, tiny=tiny, **u)
    ntm = v("ntm-K4", (4,))
    target = generative_params(ntm, data)
    predictor = ntm.model.predictor
    tolerance = None if tiny else 0.1
    depths = range(1, 4 * predictor.depth + 1)
    gaussian, _ = closest_in_size(target, [v("gaussian-K4", (4,), transporter=IdentityConfig(),
                                             predictor=predictor.replace(depth=d)) for d in depths],
                                  data, "shapes gaussian", tolerance)

    def velocity(depth: int) -> PosteriorPredictorConfig:
        return PosteriorPredictorConfig(learned_scale=False, xhat=VelocityTransformerConfig(
            depth=depth, width=predictor.width, num_heads=predictor.num_heads, mlp_ratio=predictor.mlp_ratio))

    fm_options = [v("flow-matching", (4,), transporter=IdentityConfig(), predictor=velocity(d),
                    loss=FlowMatchingConfig(), sampler=EulerConfig(num_steps=64), denoiser=NoDenoiserConfig())
                  for d in depths]
    fm, _ = closest_in_size(target, fm_options, data, "shapes flow matching", tolerance)
    ar_flow = ntm.model.transporter.replace(width=predictor.width, num_heads=predictor.num_heads, num_blocks=4)
    ar_options = [v("ar-flow", (1,), transporter=ar_flow.replace(layers_per_block=shallow, deep_layers=d),
                    predictor=predictor.replace(depth=1))
                  for shallow in (2, 1) for d in range(shallow + 1, shallow + 4 * predictor.depth + 1)]
    ar, _ = closest_in_size(target, ar_options, data, "shapes AR flow", tolerance)
    g = (guidance,) if guidance else ()
    ode = lambda n: _ode_point(EulerConfig(num_steps=n), "euler")  # noqa: E731
    models = (
        BenchModel("ntm", ntm, _with_guidance(EvalPoint(4, 4), g)),
        BenchModel("gaussian", gaussian, _with_guidance(EvalPoint(4, 4), g)),
        BenchModel("flow-matching", fm, tuple(p for n in (4, 16, 64) for p in _with_guidance(ode(n), g)),
                   likelihood=False),
        BenchModel("ar-flow", ar, _with_guidance(EvalPoint(1, None), g)),
    )
    return Suite("shapes", models, num_samples, image_metrics="domain-shapes", reference_size=1000,
                 text_eval=True, prompts=SHAPES_PROMPTS)


def latent_suite(train_steps: int = 500, seed: int = 0, tiny: bool = False, num_samples: int = 250,
                 finetune_steps: int | None = None, distill_steps: int | None = None,
                 teacher_steps: int | None = None, guidance: float = 1.5) -> Suite:
    """Pixel vs latent NTM@4 on the same data (``data:shapes`` at 32x32, captions through the small text encoder)
    and the same training wall time:

    - ``pixel-ntm``: ``shapes-t2i-ntm`` at 32x32 (patch 4: 64 tokens of 48 values), ``train_steps`` steps;
    - ``latent-ntm``: ``shapes-latent-ntm`` (the x4 autoencoder of ``shapes-ae``, trained first under
      ``DIR/runs/shapes-ae``: 4 x 8x8 latents, patch 2: 16 tokens of 16 values), trained for the pixel model's
      wall time.

    Both scored unguided and at ``guidance`` by the shapes-eval judge (32x32) and a domain FID against real
    pixels; wall ms per sample includes decoding; the rows carry the training throughput (examples/s) and, for
    the latent model, the cycle PSNR of its decoded samples and the autoencoder's own figures."""
    from ntm.experiments.autoencoder import AE_PRESETS

    if finetune_steps is not None or distill_steps is not None or teacher_steps is not None:
        from ntm.experiments.core import UsageError

        raise UsageError("the latent suite trains two models from scratch: drop --finetune-steps, --distill-steps "
                         "and --teacher-steps")
    pixel_base = PRESETS["shapes-t2i-ntm"]
    pixel_base = pixel_base.replace(data=pixel_base.data.replace(image_size=32))
    latent_base = PRESETS["shapes-latent-ntm"]
    autoencoder = AE_PRESETS["shapes-ae"]
    if tiny:  # few scenes, a minimal autoencoder
        small = dict(train_size=256, eval_size=32)
        pixel_base = pixel_base.replace(data=pixel_base.data.replace(**small))
        latent_base = latent_base.replace(data=latent_base.data.replace(**small))
        autoencoder = autoencoder.replace(data=latent_base.data, autoencoder=autoencoder.autoencoder.replace(width=8),
                                          train=autoencoder.train.replace(steps=10, warmup_steps=2),
                                          eval=autoencoder.eval.replace(num_examples=32, stats_examples=64))
    pixel = _variant(pixel_base, "shapes32-pixel-ntm-K4", steps=(4,), train_steps=train_steps, seed=seed, tiny=tiny)
    latent = _variant(latent_base, "shapes32-latent-ntm-K4", steps=(4,), train_steps=train_steps, seed=seed,
                      tiny=tiny)
    g = (guidance,) if guidance else ()
    models = (
        BenchModel("pixel-ntm", pixel, _with_guidance(EvalPoint(4, 4), g)),
        BenchModel("latent-ntm", latent, _with_guidance(EvalPoint(4, 4), g), autoencoder=autoencoder,
                   match_wall_of=pixel.name, probe_steps=3 if tiny else 20),
    )
    return Suite("latent", models, num_samples, image_metrics="domain-shapes", reference_size=1000,
                 text_eval=True, prompts=SHAPES_PROMPTS[:4])
