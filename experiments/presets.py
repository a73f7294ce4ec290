"""Named experiment presets (one dict). Each is a complete :class:`Experiment`; the CLI overrides any field."""

from __future__ import annotations

from ntm.experiments.config import EvalConfig, Experiment
from ntm.autoencoders import PretrainedAutoencoderConfig
from ntm.conditioning import ClassLabelConfig, NoConditionConfig, OpenClipTextConfig, SmallTextConfig
from ntm.data import DigitsConfig, EightGaussiansConfig, WebDatasetConfig
from ntm.data.shapes import ShapesConfig
from ntm.denoisers import NoDenoiserConfig, ScoreDenoiserConfig
from ntm.forward import MarkovConfig, UniformConfig
from ntm.model import NTMConfig
from ntm.losses import FinetuneConfig, FlowMatchingConfig
from ntm.predictors import (
    PosteriorPredictorConfig,
    TrajectoryPredictorConfig,
    TransformerPredictorConfig,
    VelocityTransformerConfig,
)
from ntm.samplers import AncestralConfig, EulerConfig
from ntm.train.config import TrainConfig
from ntm.transporters import IdentityConfig, TarFlowConfig

_TOY = Experiment(
    name="toy-ntm",
    data=EightGaussiansConfig(),
    model=NTMConfig(
        transporter=TarFlowConfig(width=64, num_blocks=2, layers_per_block=2, num_heads=4),
        predictor=TransformerPredictorConfig(depth=4, width=64, num_heads=4),
        process=MarkovConfig(schedule=UniformConfig(t_min=0.05), steps=(4,)),
    ),
    conditioner=NoConditionConfig(),
    denoiser=NoDenoiserConfig(),
    train=TrainConfig(steps=1500, batch_size=256, lr=2e-3, warmup_steps=100, sample_every=500, checkpoint_every=500),
)

_DIGITS = Experiment(
    name="digits-ntm",
    data=DigitsConfig(),
    patch_size=2,
    model=NTMConfig(
        transporter=TarFlowConfig(width=64, num_blocks=2, layers_per_block=2, num_heads=4, use_condition=True),
        predictor=TrajectoryPredictorConfig(depth=4, width=96, num_heads=4),
        process=MarkovConfig(schedule=UniformConfig(t_min=0.05), steps=(4,)),
    ),
    conditioner=ClassLabelConfig(dropout=0.1),
    # guidance 1.5: domain FID 3.93 -> 2.26 on this preset; more guidance only costs recall (docs/results.md)
    sampler=AncestralConfig(guidance=1.5),
    denoiser=ScoreDenoiserConfig(),
    train=TrainConfig(steps=1200, batch_size=64, lr=1e-3, warmup_steps=100, sample_every=400, checkpoint_every=200),
)



def _flow_matching(base: Experiment, name: str, depth: int, width: int) -> Experiment:
    """The flow-matching baseline on ``base``'s data: identity transporter, a velocity network, Euler@64."""
    velocity = PosteriorPredictorConfig(xhat=VelocityTransformerConfig(depth=depth, width=width, num_heads=4))
    return base.replace(
        name=name, model=base.model.replace(transporter=IdentityConfig(), predictor=velocity),
        loss=FlowMatchingConfig(), sampler=EulerConfig(num_steps=64), denoiser=NoDenoiserConfig(),
    )


def _finetune(base: Experiment, name: str, steps: int, lr: float) -> Experiment:
    """Finetuning ``base``'s NTM from a flow-matching teacher (``ntm finetune --from RUN`` fills in the teacher).

    TarFlow at exact identity, the posterior predictor over the teacher's velocity network with a
    zero-initialised scale head and a frozen copy, NLL + cosine-annealed mean alignment.
    """
    predictor = PosteriorPredictorConfig(learned_scale=True, reference=True)
    return base.replace(
        name=name, model=base.model.replace(predictor=predictor), loss=FinetuneConfig(),
        train=base.train.replace(steps=steps, lr=lr, warmup_steps=0.05),
    )


# Text-to-image on procedural captioned shapes at 16x16 RGB (patch 4: 16 tokens of 48 values; --data.image-size 32
# gives 64 tokens, 3.5x slower a step), captions through a small text encoder trained with the model
# (conditioner:small-text), 10% caption dropout for guidance.
_SHAPES = Experiment(
    name="shapes-t2i-ntm",
    data=ShapesConfig(image_size=16),
    patch_size=4,
    model=NTMConfig(
        transporter=TarFlowConfig(width=96, num_blocks=2, layers_per_block=2, num_heads=4, use_condition=True),
        predictor=TrajectoryPredictorConfig(depth=4, width=128, num_heads=4),
        process=MarkovConfig(schedule=UniformConfig(t_min=0.05), steps=(4,)),
    ),
    conditioner=SmallTextConfig(dropout=0.1),
    sampler=AncestralConfig(guidance=1.5),
    denoiser=ScoreDenoiserConfig(),
    # 2,000 steps in 1,509 s on 2 idle CPU cores at 16x16 (2026-11-29; 0.36 steps/s at 32x32): within the
    # 30-minute CPU budget
    train=TrainConfig(steps=2000, batch_size=64, lr=1e-3, warmup_steps=50, sample_every=500, checkpoint_every=100),
    eval=EvalConfig(num_examples=1000, grid_columns=8),
)


# GPU-sized, mirroring the paper's from-scratch setting in pixel space: transporter 2 blocks x 4 layers, a 24-layer
# predictor over the whole trajectory, K = 4, 10% condition dropout, bf16, on 64x64 pixels (patch 4: 256 tokens).
# Point data.urls at ImageNet shards. num_workers=8 (as every GPU preset reading shards): PNG/JPEG decoding and
# resizing in the training process would stall the GPU (measure with `ntm bench loader --preset ...`); 8 workers per
# GPU fit the usual 8-GPU node of >= 64 cores and split ~1,282 shards evenly (docs/scaling.md).
_IMAGENET64_PIXELS = Experiment(
    name="imagenet64-pixels",
    data=WebDatasetConfig(urls="data/imagenet/train-{000000..001281}.tar", image_size=64, channels=3, num_classes=1000,
                          num_workers=8),
    patch_size=4,
    model=NTMConfig(
        transporter=TarFlowConfig(width=768, num_blocks=2, layers_per_block=4, num_heads=12, use_condition=True),
        predictor=TrajectoryPredictorConfig(depth=24, width=1024, num_heads=16),
        process=MarkovConfig(schedule=UniformConfig(t_min=0.05), steps=(4,)),
    ),
    conditioner=ClassLabelConfig(dropout=0.1),
    denoiser=ScoreDenoiserConfig(),
    train=TrainConfig(
        steps=400_000, batch_size=1024, lr=3e-4, betas=(0.9, 0.95), weight_decay=1e-4, warmup_steps=5000,
        ema_decay=0.9999, sample_every=5000, checkpoint_every=2000, precision="bf16",
    ),
    eval=EvalConfig(num_examples=10_000, batch_size=256),
)

# The paper's setting: the same model in an autoencoder's latent space. 256x256 images, the x8 / 32-channel
# autoencoder of `ntm autoencoder train imagenet-ae` (FAE-like 32x32x32 latents), patch 2: 256 tokens of 128 values.
# Encode the shards once (ntm shards write --encode runs/imagenet-ae ...) and train on data:latent-shards, or
# encode on the fly from these pixel shards (docs/latent.md).
_IMAGENET_PAPER = _IMAGENET64_PIXELS.replace(
    name="imagenet-paper",
    data=WebDatasetConfig(urls="data/imagenet256/train-{000000..001281}.tar", image_size=256, channels=3,
                          num_classes=1000, num_workers=8),
    autoencoder=PretrainedAutoencoderConfig(path="runs/imagenet-ae"),
    patch_size=2,
)

# GPU-sized text-to-image: imagenet-paper's model, latent space and training on webdataset image-text shards
# (png/jpg + txt) at 256x256, captions through open_clip's ViT-L-14 text tower (frozen, features cached per caption)
# from a local weights file, guidance 3. Point data.urls / eval_urls at the shards and conditioner.weights at an
# open_clip ViT-L-14 state dict; nothing is downloaded.
_T2I_PAPER = _IMAGENET_PAPER.replace(
    name="t2i-paper",
    data=WebDatasetConfig(urls="data/t2i/train-{000000..006999}.tar", eval_urls="data/t2i/val-{000000..000009}.tar",
                          image_size=256, channels=3, num_workers=8),
    conditioner=OpenClipTextConfig(model="ViT-L-14", weights="weights/open_clip_vit_l14.pt", dropout=0.1),
    sampler=AncestralConfig(guidance=3.0),
)

# Latent-space NTMs on CPU: first `ntm autoencoder train digits-ae` / `shapes-ae` (experiments/autoencoder.py).
# digits: 2 x 4x4 latents, patch 2 -> 4 tokens of 8 values (1,200 steps in 126 s on 2 idle CPU cores, 2026-11-29).
_DIGITS_LATENT = _DIGITS.replace(name="digits-latent-ntm", autoencoder=PretrainedAutoencoderConfig(path="runs/digits-ae"))
# shapes at 32x32 through the x4 autoencoder: 4 x 8x8 latents, patch 2 -> 16 tokens of 16 values (the pixel model
# at 32x32 needs 64 tokens of 48 at patch 4). 1.42 steps/s measured on 2 CPU cores (`ntm bench latent`): 1,200 steps
# in about 14 minutes.
_SHAPES_LATENT = _SHAPES.replace(
    name="shapes-latent-ntm", data=ShapesConfig(image_size=32), patch_size=2,
    autoencoder=PretrainedAutoencoderConfig(path="runs/shapes-ae"),
    train=_SHAPES.train.replace(steps=1200),
)

PRESETS: dict[str, Experiment] = {
    "toy-ntm": _TOY,
    "toy-gaussian": _TOY.replace(name="toy-gaussian", model=_TOY.model.replace(transporter=IdentityConfig())),
    "digits-ntm": _DIGITS,
    "digits-gaussian": _DIGITS.replace(name="digits-gaussian", model=_DIGITS.model.replace(transporter=IdentityConfig())),
    "toy-flow-matching": _flow_matching(_TOY, "toy-flow-matching", depth=4, width=64),
    "digits-flow-matching": _flow_matching(_DIGITS, "digits-flow-matching", depth=4, width=96),
    "shapes-t2i-ntm": _SHAPES,
    "shapes-t2i-gaussian": _SHAPES.replace(name="shapes-t2i-gaussian",
                                          model=_SHAPES.model.replace(transporter=IdentityConfig())),
    "shapes-t2i-fm": _flow_matching(_SHAPES, "shapes-t2i-fm", depth=4, width=128).replace(
        sampler=EulerConfig(num_steps=64, guidance=1.5)),
    "toy-finetune": _finetune(_TOY, "toy-finetune", steps=500, lr=5e-4),
    "digits-finetune": _finetune(_DIGITS, "digits-finetune", steps=600, lr=3e-4),
    "digits-latent-ntm": _DIGITS_LATENT,
    "shapes-latent-ntm": _SHAPES_LATENT,
    "imagenet-paper": _IMAGENET_PAPER,
    "imagenet64-pixels": _IMAGENET64_PIXELS,
    "t2i-paper": _T2I_PAPER,
}
