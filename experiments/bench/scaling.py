"""Sizing a run before it starts: model dims without data, parameter counts, training FLOPs and memory per GPU.

``ntm bench scaling imagenet-paper --gpus 8 64`` prints the memory table of docs/scaling.md.

No shard is read and no weight loaded that is not there: the model is built on the meta device from the preset's
config, the token geometry comes from the data config and, while ``autoencoder.path`` does not exist yet, from the
autoencoder preset of that name (:func:`model_dims`).

**Training FLOPs per example** (:func:`train_flops`; the model FLOPs of MFU, counted as in the PaLM paper: a
multiply-add is 2 FLOPs, the backward pass costs twice the forward, attention counted over every key of the
sequence, masked or not). The model is a set of transformer *stacks*, each run on ``S`` sequences of ``T`` tokens
per example, with ``L`` layers of width ``d`` and MLP hidden size ``h``:

- the transporter's AR blocks: ``S = K`` levels, ``T = N`` tokens, adaLN context per sequence;
- the trajectory predictor: ``S = 1``, ``T = K N`` (all levels in one block-causal sequence), adaLN context per token;
  a Markov predictor or a posterior predictor's x-hat network: ``S = K``, ``T = N``, context per sequence.

One stack's forward pass costs, per sequence,

    F = L [2 T (4 d^2 + 2 d h) + 2 T' (6 d^2) + 4 T^2 d] + 2 T d (d_in + d_out) + 2 T' (2 d^2)

where ``T' = T`` for a per-token adaLN context and ``1`` for a per-sequence one (``6 d^2``: the adaLN modulation,
``2 d^2``: the read-out's), ``d_in`` / ``d_out`` the token width in and the read-out width. Training is
``3 S F`` per stack, summed over stacks; time and label embeddings (per sequence, ``O(d^2)``) are left out.
With ``K`` drawn from a set, the mean ``K`` is used.

**Memory per GPU** (:func:`memory_estimate`; its keywords are the ``train.*`` fields of the same names), with
``P`` parameters sharded over ``n`` GPUs (FSDP2):

    M = P (4 + 4 + 8 + 4) / n                  fp32 master weights, fp32 gradients, AdamW moments, EMA
      + W                                       gathered and bf16 copies of the weights, not sharded (below)
      + b sum_stacks S T L a d                  activations, activation_checkpointing none
      | b sum_stacks S T (4 L d + c) + b max_stacks S T a d     full (every block recomputed)

``b`` is the micro-batch per GPU (``batch_size / (world_size grad_accum)``; under HSDP ``n`` is the shard size).
``a`` is the activation bytes per token per unit of width one block saves for its backward pass, measured on the
block itself (:func:`activation_bytes`, about 70 for the trajectory predictor's per-token context and 49 for the
transporter's in bf16). A checkpointed block keeps only its input (the float32 residual stream: ``4 d`` bytes per
token), the stack its per-token context ``c = 4 d`` once (``0`` for a per-sequence one), and one block's activations
are live again while it is recomputed; ``selective`` checkpoints every second block. ``W``: under FSDP the units in
flight are gathered (``mixed_precision`` bf16: 2 bytes a weight, none: 4) -- the one computing and the one
prefetched, ``2 U + R`` with the largest unit ``U`` and the root's own weights ``R`` (``reshard_after_forward``
true; ``auto`` keeps the last unit: ``3 U + R``; false keeps them all: ``P``), plus one unit's unsharded gradients
(``4 U``); and bf16 autocast without FSDP's bf16 weights (``mixed_precision`` none, or one GPU) caches a bf16 copy
of every weight for the step: ``2 P``. Not counted: the CUDA context and allocator slack (1-3 GB), the loss's own
tensors (a few per token, under 1 %), the text encoder of a caption-conditioned model.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from pathlib import Path
from typing import Literal

import torch
import tyro
from torch import nn

from ntm.experiments.config import Experiment
from ntm.experiments.core import UsageError
from ntm.data.base import DataSpec
from ntm.model import NTM
from ntm.nn.backbone import TokenTransformer
from ntm.nn.layers import AdaLNBlock
from ntm.nn.tokens import TokenLayout
from ntm.predictors.posterior import PosteriorPredictor
from ntm.predictors.transformer import TrajectoryPredictor, TransformerPredictor
from ntm.spec import ModelDims
from ntm.train.distributed import shard_units
from ntm.train.step import TrainState, build_train_state
from ntm.transporters.tarflow import CausalFlow

GiB = 1024**3
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}
"""Dense bf16 tensor-core peak (TFLOP/s, no sparsity) of common GPUs; MFU is measured against it."""


def data_spec(exp: Experiment) -> DataSpec:
    """The spec of ``exp.data``: from the config of an image-shard source (its shards need not exist), else from
    the built source."""
    data = exp.data
    if "urls" in type(data).model_fields and all(hasattr(data, f) for f in ("channels", "image_size")):
        size = int(data.image_size)
        return DataSpec(shape=(int(data.channels), size, size), num_classes=int(data.num_classes or 0), kind="images")
    return data.build().spec


def latent_shape(exp: Experiment, shape: tuple[int, ...]) -> tuple[int, ...]:
    """What the model sees of an example of ``shape``: the autoencoder's latent shape, or ``shape`` on pixels.

    A pretrained autoencoder's weights file is read when it exists; otherwise the autoencoder preset of the same
    name as its run directory (``runs/imagenet-ae`` -> ``imagenet-ae``) is built with random weights.
    """
    ae = exp.autoencoder
    if ae.is_identity:
        return shape
    path = getattr(ae, "path", None)
    if path is not None and not Path(path).exists():
        from ntm.experiments.autoencoder import AE_PRESETS

        name = Path(path).name
        if name not in AE_PRESETS:
            raise FileNotFoundError(f"autoencoder.path {path} does not exist and names no autoencoder preset "
                                    f"({', '.join(AE_PRESETS)})")
        ae = AE_PRESETS[name].autoencoder
        with torch.device("meta"):  # random weights of the preset's architecture: only the shapes are read
            return tuple(ae.build(shape).latent_shape(shape))
    return tuple(ae.build(shape).latent_shape(shape))


def model_dims(exp: Experiment) -> ModelDims:
    """The token geometry and conditioning of ``exp``'s model (as :func:`experiments.build.dims_for` gives them),
    without reading shards or autoencoder weights (an in-memory source is built)."""
    spec = data_spec(exp)
    shape = tuple(spec.shape)
    if not exp.autoencoder.is_identity:
        shape = latent_shape(exp, shape)
    layout = TokenLayout(shape, exp.patch_size if len(shape) == 3 else 1)
    conditioning = getattr(exp.conditioner, "model_dims", None)
    fields = {"num_classes": spec.num_classes} if conditioning is None else conditioning(spec.num_classes)
    return ModelDims(layout.num_tokens, layout.token_dim, **fields)


def meta_model(exp: Experiment, dims: ModelDims | None = None) -> NTM:
    """``exp``'s model built on the meta device (shapes only, no memory)."""
    dims = dims or model_dims(exp)
    encoder = getattr(exp.conditioner, "encoder", None)
    with torch.device("meta"):
        return exp.model.build(dims, condition_encoder=None if encoder is None else encoder(dims))


def count(module: nn.Module, trainable: bool = True) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable)


def param_counts(model: nn.Module) -> dict[str, int]:
    """Trainable parameters: ``total``, per component, ``largest_unit`` (the largest FSDP unit) and ``root``
    (those in no unit, gathered for the whole step)."""
    out = {"total": count(model)}
    for name in ("transporter", "predictor", "condition_encoder"):
        part = getattr(model, name, None)
        if isinstance(part, nn.Module):
            out[name] = count(part)
    units = shard_units(model)
    out["largest_unit"] = max((count(u) for u in units), default=0)
    out["root"] = out["total"] - sum(count(u) for u in units)
    return out


@dataclasses.dataclass(frozen=True)
class Stack:
    """A transformer stack run on ``sequences`` sequences of ``tokens`` tokens per example."""

    name: str
    layers: int
    width: int
    hidden: int
    tokens: int
    sequences: float
    per_token_context: bool
    d_in: int
    d_out: int

    def forward_flops(self) -> float:
        """Forward FLOPs per example (the formula of the module docstring, times ``sequences``)."""
        d, h, t = self.width, self.hidden, self.tokens
        ctx = t if self.per_token_context else 1
        layer = 2 * t * (4 * d * d + 2 * d * h) + 2 * ctx * 6 * d * d + 4 * t * t * d
        return self.sequences * (self.layers * layer + 2 * t * d * (self.d_in + self.d_out) + 2 * ctx * 2 * d * d)


def _blocks_stack(name: str, blocks: list[AdaLNBlock], tokens: int, sequences: float, per_token: bool, d_in: int,
                  d_out: int) -> Stack:
    first = blocks[0]
    return Stack(name, len(blocks), first.mlp.fc1.in_features, first.mlp.fc1.out_features, tokens, sequences,
                 per_token, d_in, d_out)


def stacks(model: NTM, *, num_steps: float, flow_matching: bool = False) -> list[Stack]:
    """The transformer stacks of ``model`` and how a training example runs them at ``num_steps`` levels.

    Known components: causal-flow transporters (``tarflow``, ``spline-tarflow``), the ``trajectory`` and
    ``transformer`` predictors, a ``posterior`` predictor over a token-transformer x-hat network (one pass per
    level; one pass per example under flow matching). Others raise ``NotImplementedError``.
    """
    dims = model.dims
    n, p = dims.num_tokens, dims.token_dim
    out: list[Stack] = []
    if isinstance(model.transporter, CausalFlow):
        for j, block in enumerate(model.transporter.blocks):
            out.append(_blocks_stack(f"transporter.block{j}", list(block.layers), n, num_steps, False, p,
                                     block.out.linear.out_features))
    elif count(model.transporter, trainable=False):
        raise NotImplementedError(f"no FLOP formula for the transporter {type(model.transporter).__name__}")
    predictor = model.predictor
    if isinstance(predictor, TrajectoryPredictor):
        net = predictor.net
        out.append(_blocks_stack("predictor", list(net.blocks), round(num_steps * n), 1, True, p,
                                 net.final.linear.out_features))
    elif isinstance(predictor, TransformerPredictor):
        net = predictor.net
        out.append(_blocks_stack("predictor", list(net.blocks), n, num_steps, False, p, net.final.linear.out_features))
    elif isinstance(predictor, PosteriorPredictor) and isinstance(getattr(predictor.xhat, "net", None),
                                                                  TokenTransformer):
        net = predictor.xhat.net
        out.append(_blocks_stack("predictor.xhat", list(net.blocks), n, 1 if flow_matching else num_steps, False, p,
                                 net.final.linear.out_features))
    else:
        raise NotImplementedError(f"no FLOP formula for the predictor {type(predictor).__name__}")
    return out


def exp_stacks(exp: Experiment, model: NTM | None = None, *, largest: bool = False) -> list[Stack]:
    """:func:`stacks` of ``exp``'s model at its mean K (``largest``: its largest K, for memory)."""
    from ntm.losses import FlowMatchingConfig

    model = model or meta_model(exp)
    steps = exp.model.process.steps
    k = max(steps) if largest else sum(steps) / len(steps)
    return stacks(model, num_steps=k, flow_matching=isinstance(exp.loss, FlowMatchingConfig))


def train_flops(exp: Experiment, model: NTM | None = None) -> dict[str, float]:
    """Training FLOPs per example: ``{stack name: 3 x forward, ..., "total": sum}`` (module docstring)."""
    per = {s.name: 3 * s.forward_flops() for s in exp_stacks(exp, model)}
    return {**per, "total": sum(per.values())}


@functools.cache
def activation_bytes(per_token_context: bool, mlp_ratio: float, precision: Literal["bf16", "fp32"] = "bf16") -> float:
    """Bytes one :class:`AdaLNBlock` saves for backward per token and unit of width (``a`` of the formula).

    Measured, not assumed: a width-64 block runs forward (CPU, bf16 autocast or float32, causal attention: the
    fused kernels that keep no attention matrix) at two batch sizes under ``saved_tensors_hooks``; the growth of
    the distinct storages it saved (weights and their casts do not grow with the batch) per added token and unit
    of width is ``a``.
    """
    width, length = 64, 32
    with torch.random.fork_rng(devices=[]):  # the caller's random state is left as it was
        torch.manual_seed(0)
        block = AdaLNBlock(width, 4, width, mlp_ratio)
        return _saved_growth(block, per_token_context, precision, width, length)


def _saved_growth(block: AdaLNBlock, per_token_context: bool, precision: str, width: int, length: int) -> float:
    """Bytes ``block`` saves for backward per added token and unit of width (batches of 2 and 6)."""

    def saved(batch: int) -> int:
        x = torch.randn(batch, length, width, requires_grad=True)
        c = torch.randn(batch, length if per_token_context else 1, width, requires_grad=True)
        sizes: dict[int, int] = {}

        def pack(t: torch.Tensor) -> torch.Tensor:
            sizes[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), \
                torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            block(x, c, mask="causal")
        return sum(sizes.values())

    return (saved(6) - saved(2)) / (4 * length * width)


def memory_estimate(
    exp: Experiment, *, gpus: int, micro_batch: int,
    activation_checkpointing: Literal["none", "selective", "full"] = "none",
    mixed_precision: Literal["none", "bf16"] = "none", precision: Literal["bf16", "fp32"] = "bf16",
    reshard_after_forward: bool | Literal["auto"] = "auto", model: NTM | None = None,
) -> dict[str, float]:
    """Bytes per GPU of ``exp`` trained on ``gpus`` GPUs at ``micro_batch`` examples per GPU (module docstring).

    The keywords are the ``train.*`` fields of the same names. ``precision="bf16"`` (autocast) with
    ``mixed_precision="none"`` caches a bf16 copy of every weight for the step; ``mixed_precision="bf16"`` (FSDP2
    gathers bf16 weights, unit by unit) does not. ``"selective"`` checkpointing recomputes every second block.
    Returns the terms (``state``, ``weights``: gathered and cast copies, ``activations``) and their ``total``.
    """
    model = model or meta_model(exp)
    params = param_counts(model)
    p, unit, root = params["total"], params["largest_unit"], params["root"]
    state = p * (4 + 4 + 8 + 4) / gpus
    weights = 0.0
    if gpus > 1:  # FSDP2: units gathered in flight (the one computing, the one prefetched), the root throughout
        in_flight = {True: 2 * unit + root, "auto": 3 * unit + root, False: p}[reshard_after_forward]
        weights += (2 if mixed_precision == "bf16" else 4) * in_flight + 4 * unit  # + a unit's unsharded gradients
    if precision == "bf16" and (mixed_precision == "none" or gpus == 1):
        weights += 2.0 * p  # autocast's cache of bf16 weight copies, held for the whole step
    acts = 0.0
    live = 0.0
    for s in exp_stacks(exp, model, largest=True):
        a = activation_bytes(s.per_token_context, s.hidden / s.width, precision)
        rows = micro_batch * s.sequences * s.tokens
        kept = {"none": s.layers, "selective": s.layers // 2, "full": 0}[activation_checkpointing]
        acts += rows * kept * a * s.width
        if kept < s.layers:  # checkpointed blocks keep their float32 input; one recomputes at a time
            acts += rows * (4 * (s.layers - kept) * s.width + (4 * s.width if s.per_token_context else 0))
            live = max(live, rows * a * s.width)
    out = {"params": float(p), "state": state, "weights": weights, "activations": acts + live}
    out["total"] = state + weights + acts + live
    return out


def max_micro_batch(exp: Experiment, *, capacity_gib: float, reserve_gib: float = 3.0, model: NTM | None = None,
                    **settings) -> int:
    """The largest micro-batch per GPU whose :func:`memory_estimate` fits ``capacity_gib`` less ``reserve_gib``
    (CUDA context, allocator slack); 0 when not even the state fits."""
    model = model or meta_model(exp)
    fixed = memory_estimate(exp, micro_batch=0, model=model, **settings)["total"]
    per_example = memory_estimate(exp, micro_batch=1, model=model, **settings)["total"] - fixed
    room = (capacity_gib - reserve_gib) * GiB - fixed
    return max(0, int(room // per_example))


def memory_table(exp: Experiment, gpus: tuple[int, ...] = (8, 64), batch_size: int | None = None,
                 capacity_gib: float = 80.0) -> str:
    """Markdown: memory per GPU for each GPU count at the preset's global batch without gradient accumulation,
    for each activation checkpointing setting, with autocast alone and with FSDP2's bf16 weights."""
    model = meta_model(exp)
    batch = batch_size or exp.train.batch_size
    head = ("| GPUs | micro-batch / GPU | activation checkpointing | state (GiB) | weights (GiB) | activations (GiB) "
            f"| total (GiB) | largest micro-batch in {capacity_gib:g} GiB |")
    rows = [head, "|---|---|---|---|---|---|---|---|"]
    for n in gpus:
        micro = math.ceil(batch / n)
        for ac in ("none", "selective", "full"):
            cells = [memory_estimate(exp, gpus=n, micro_batch=micro, activation_checkpointing=ac, model=model,
                                     mixed_precision=mp) for mp in ("none", "bf16")]
            fits = [max_micro_batch(exp, capacity_gib=capacity_gib, gpus=n, activation_checkpointing=ac, model=model,
                                    mixed_precision=mp) for mp in ("none", "bf16")]
            a, b = cells
            rows.append(f"| {n} | {micro} | {ac} | {a['state'] / GiB:.1f} | {a['weights'] / GiB:.2f} / "
                        f"{b['weights'] / GiB:.2f} | {a['activations'] / GiB:.1f} | {a['total'] / GiB:.1f} / "
                        f"{b['total'] / GiB:.1f} | {fits[0]} / {fits[1]} |")
    return "\n".join(rows) + "\n"


TINY = {"depth": 1, "width": 16, "num_heads": 2, "layers_per_block": 1}
"""The fields :func:`tiny_experiment` shrinks, wherever a network config has them."""


def _shrunk(cfg):
    """``cfg`` with every field of :data:`TINY` it has set to the minimum, its ``xhat`` network shrunk too."""
    fields = type(cfg).model_fields
    updates = {key: value for key, value in TINY.items() if key in fields}
    if "xhat" in fields:
        updates["xhat"] = _shrunk(cfg.xhat)
    return cfg.replace(**updates) if updates else cfg


def tiny_experiment(exp: Experiment) -> Experiment:
    """``exp`` with its transporter, predictor (and x-hat network) and text encoder shrunk to a minimum (smoke
    tests): same token geometry, same loss and training step."""
    model = exp.model.replace(transporter=_shrunk(exp.model.transporter), predictor=_shrunk(exp.model.predictor))
    return exp.replace(model=model, conditioner=_shrunk(exp.conditioner))


# -- one training step, timed ----------------------------------------------------------------------------------


def checkpoint_blocks(model: nn.Module) -> int:
    """Full activation checkpointing as the loop applies it for ``train.activation_checkpointing full``
    (``ntm.train.distributed.checkpoint_activations``: every shard unit recomputes its forward in the backward
    pass); without that function, every :class:`AdaLNBlock` through non-reentrant ``torch.utils.checkpoint``.
    Returns the number of checkpointed modules."""
    from ntm.train import distributed as D

    apply = getattr(D, "checkpoint_activations", None)
    if apply is not None:
        return len(apply(model, "full"))
    from torch.utils.checkpoint import checkpoint

    blocks = [m for m in model.modules() if isinstance(m, AdaLNBlock)]
    for block in blocks:
        block.forward = functools.partial(checkpoint, type(block).forward.__get__(block), use_reentrant=False)
    return len(blocks)


def compile_blocks(model: nn.Module) -> int:
    """``torch.compile`` every :class:`AdaLNBlock` of ``model`` in place (blocks of one shape share a graph; the
    loss around them, with its data-dependent grouping by K, stays eager). Returns the number of blocks."""
    blocks = [m for m in model.modules() if isinstance(m, AdaLNBlock)]
    for block in blocks:
        block.compile()
    return len(blocks)


class TokenBatches:
    """The layout of batches already in tokens ``(B, N, d)`` (the GPU bench's random data): ``to_tokens`` keeps
    them as they are."""

    @staticmethod
    def to_tokens(x: torch.Tensor) -> torch.Tensor:
        return x


def bench_state(exp: Experiment, model: NTM, *, device: torch.device | str, layout,
                precision: Literal["bf16", "fp32"] | None = None, grad_accum: int = 1) -> TrainState:
    """The training loop's own state (:func:`ntm.train.step.build_train_state`) for ``model`` on one device, no
    process group, nothing written: the experiment's AdamW, schedule, EMA, loss and conditioner, with
    ``precision`` and ``grad_accum`` set; the benches time :func:`ntm.train.step.train_step` on it, the loop's
    step itself. Activation checkpointing and ``torch.compile`` stay as the caller set them on ``model``."""
    from ntm.experiments.build import conditioner_of

    train = exp.train.replace(grad_accum=grad_accum, precision=precision or exp.train.precision,
                              activation_checkpointing="none", compile=False)
    return build_train_state(train, model, objective=exp.loss.build(), conditioner=conditioner_of(exp.conditioner),
                             layout=layout, num_classes=model.dims.num_classes, device=device)


@dataclasses.dataclass(frozen=True)
class ScalingArgs:
    """Parameters, training FLOPs per example and the memory per GPU of a preset, from its config alone (the model
    built on the meta device; nothing read, nothing trained)."""

    preset: tyro.conf.Positional[str] = "imagenet-paper"
    """The preset to size."""
    gpus: tuple[int, ...] = (8, 64)
    """GPU counts of the memory table's columns."""
    batch_size: int | None = None
    """Global batch (default: the preset's)."""
    capacity_gib: float = 80.0
    """GPU memory for the table's last column, GiB."""


def run(args: ScalingArgs) -> int:
    """Print the sizes of ``args.preset`` (the memory table of docs/scaling.md)."""
    from ntm.experiments.presets import PRESETS

    if args.preset not in PRESETS:
        raise UsageError(f"unknown preset {args.preset!r}; presets: {', '.join(sorted(PRESETS))}")
    if not args.gpus or min(args.gpus) < 1:
        raise UsageError(f"--gpus takes GPU counts >= 1, got {list(args.gpus)}")
    return _print_sizes(PRESETS[args.preset], args)


def _print_sizes(exp: Experiment, args: ScalingArgs) -> int:
    model = meta_model(exp)
    params = param_counts(model)
    flops = train_flops(exp, model)
    dims = model.dims
    print(f"{args.preset}: {dims.num_tokens} tokens x {dims.token_dim}, K = {list(exp.model.process.steps)}; "
          + ", ".join(f"{k} {v / 1e6:.1f} M" for k, v in params.items()) + " parameters")
    print(f"training FLOPs per example: {flops['total'] / 1e12:.3f} TFLOP ("
          + ", ".join(f"{k} {v / 1e12:.3f}" for k, v in flops.items() if k != "total") + ")")
    for s in exp_stacks(exp, model, largest=True):
        print(f"  {s.name}: {s.layers} layers, width {s.width}, {s.sequences:g} x {s.tokens} tokens, "
              f"a = {activation_bytes(s.per_token_context, s.hidden / s.width):.1f} bytes / token / width (bf16)")
    print(memory_table(exp, tuple(args.gpus), args.batch_size, args.capacity_gib), end="")
    return 0
