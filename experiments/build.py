"""From an :class:`Experiment` to built components: layout, model, previews and sample grids."""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path
from typing import Any

import pydantic
import torch
from torch import Tensor, nn

from ntm.experiments.config import Experiment
from ntm.experiments.core import UsageError
from ntm.autoencoders import AUTOENCODERS, AutoencoderError, LatentSource
from ntm.conditioning import CONDITIONERS
from ntm.conditioning.base import Conditioner, ConditionerConfig
from ntm.data.base import DATA_SOURCES, DataError, DataSource
from ntm.denoisers import Denoiser, DenoiserConfig
from ntm.model import NTM
from ntm.nn.tokens import TokenLayout
from ntm.samplers.base import Rows, SamplerConfig
from ntm.spec import ModelDims
from ntm.train import distributed as D
from ntm.train.init import initialize_from
from ntm.train.loop import TrainJob
from ntm.viz import image_grid, scatter_density


@functools.lru_cache(maxsize=None)
def conditioner_of(config: ConditionerConfig) -> Conditioner:
    """The process's one conditioner of ``config``, built on first use: training, previews, evaluation and
    sampling share it, so its once-only notices (a caption truncated to the context length) print once per run,
    not once per batch of samples."""
    return config.build()


def data_for(exp: Experiment) -> DataSource:
    """The experiment's data as the model sees it: the source itself, or its latents under the run's autoencoder
    (encoded on the fly, or cached latent shards checked against the autoencoder's fingerprint)."""
    data = exp.data.build()
    if exp.autoencoder.is_identity:
        if data.spec.encoded_by is not None:
            raise AutoencoderError(f"data source '{DATA_SOURCES.name_of(exp.data)}' yields latents of autoencoder "
                                   f"{data.spec.encoded_by}; give the run the autoencoder that wrote them "
                                   "(autoencoder:pretrained --autoencoder.path RUN)")
        return data
    name = AUTOENCODERS.name_of(exp.autoencoder)
    if exp.autoencoder.untrained():
        raise AutoencoderError(f"autoencoder:{name} has no trained weights: train one (ntm autoencoder train "
                               f"shapes-ae) and pass --autoencoder.weights RUN, or use autoencoder:pretrained "
                               f"--autoencoder.path RUN")
    image_shape = data.spec.image_shape if data.spec.encoded_by is not None else data.spec.shape
    if image_shape is None:
        raise AutoencoderError(f"data source '{DATA_SOURCES.name_of(exp.data)}' yields latents without the image "
                               "shape they decode to")
    return LatentSource(data, exp.autoencoder.build(tuple(image_shape)))


def pixel_images(data: DataSource) -> DataSource:
    """The image source under ``data`` (the source itself on the pixel path); cached latents have none, so
    those are ``data`` again and show (decoded) through ``to_display``."""
    return getattr(data, "pixel_source", None) or data


def layout_for(exp: Experiment, data: DataSource) -> TokenLayout:
    spec = data.spec
    try:
        return TokenLayout(spec.shape, exp.patch_size if len(spec.shape) == 3 else 1)
    except ValueError as e:  # a patch that does not divide the image (or latent) size
        space = "latent" if spec.encoded_by else "image"
        raise DataError(f"patch_size {exp.patch_size} does not divide the {space} size {spec.shape[-2]}x"
                        f"{spec.shape[-1]} ({e})") from None


def provides(data: DataSource, field: str) -> bool:
    """Whether ``data``'s batches carry ``field`` (``"label"``, ``"caption"``).

    Labels: the spec's ``num_classes``. Other fields: the spec's own word when it
    has an attribute of that name in the plural (``spec.captions``), else the
    first held-out (or, without a held-out split, training) batch is looked at.
    """
    if field == "label":
        return data.spec.num_classes > 0
    declared = getattr(data.spec, f"{field}s", None)
    if isinstance(declared, bool):
        return declared
    try:
        batch = next(iter(data.eval_batches(1, max_examples=1)), None)
    except DataError:
        batch = None
    if batch is None:
        batch = next(iter(data.train_batches(1, seed=0)))
    return getattr(batch, field, None) is not None


def check_condition_source(exp: Experiment, data: DataSource) -> None:
    """One-line :class:`DataError` when the conditioner reads a batch field the data source does not give.

    Only fields other than labels are checked: a class conditioner on unlabelled data has always meant an
    unconditional model.
    """
    field = exp.conditioner.reads
    if field != "label" and not provides(data, field):
        raise DataError(f"conditioner '{CONDITIONERS.name_of(exp.conditioner)}' reads the batch field '{field}', "
                        f"but data source '{DATA_SOURCES.name_of(exp.data)}' gives no {field}s; use a source with "
                        f"{field}s or another conditioner (conditioner:class, conditioner:none)")


def dims_for(exp: Experiment, data: DataSource) -> ModelDims:
    """Token geometry from the data and patching; conditioning fields from the conditioner (``model_dims``)."""
    layout = layout_for(exp, data)
    check_condition_source(exp, data)
    model_dims = getattr(exp.conditioner, "model_dims", None)
    if model_dims is None:  # a conditioner config from before ConditionerConfig: class labels unless 'none'
        conditional = CONDITIONERS.name_of(exp.conditioner) != "none"
        fields = {"num_classes": data.spec.num_classes if conditional else 0}
    else:
        fields = model_dims(data.spec.num_classes)
    return ModelDims(layout.num_tokens, layout.token_dim, **fields, grid=layout.grid)


def build_model(exp: Experiment, data: DataSource, dims: ModelDims | None = None) -> NTM:
    """The experiment's NTM, with the conditioner's condition encoder (if it has one) as a trained part.

    ``dims`` (default: :func:`dims_for`, which may read the data) lets a build touch nothing but the model, as a
    build on the meta device must."""
    dims = dims_for(exp, data) if dims is None else dims
    encoder = getattr(exp.conditioner, "encoder", None)
    return exp.model.build(dims, condition_encoder=None if encoder is None else encoder(dims))


def build_denoiser(exp: Experiment, config: DenoiserConfig | None = None) -> Denoiser:
    """The run's denoiser (or ``config``), finding trained weights of its own under the run directory."""
    config = config or exp.denoiser
    if isinstance(config, DenoiserConfig):
        config = config.for_run(Path(exp.resolved_run_dir))
    return config.build()


def chunk_seed(seed: int, index: int) -> int:
    """The seed of chunk ``index`` of a chunked draw (:func:`sample`): ``seed`` itself for chunk 0 (so a draw that
    fits in one chunk is what one sampler call gives), else a 63-bit hash of ``(seed, index)``: every chunk its own
    stream, fixed by the seed and the chunk's position alone."""
    if index == 0:
        return int(seed)
    digest = hashlib.blake2b(f"ntm.sample/{int(seed)}/{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def sample(
    exp: Experiment,
    model: NTM,
    data: DataSource,
    n: int,
    *,
    labels: Tensor | None = None,
    captions: list[str] | None = None,
    sampler: SamplerConfig | None = None,
    denoise: bool = True,
    denoiser: DenoiserConfig | None = None,
    seed: int | None = None,
    batch_size: int | None = None,
) -> Tensor:
    """Draw ``n`` samples in data space ``(n, *shape)`` (normalised, on the CPU), denoised by the configured denoiser.

    ``sampler`` and ``denoiser`` replace the experiment's configs (e.g. ``exp.sampler.replace(num_steps=2)``).
    The sampler decodes only what the denoiser reads (nothing for one that reads ``u_0``). ``captions`` (``n``
    strings, for a model with a condition encoder) are tokenized by the experiment's conditioner; an empty
    caption, like no captions at all, samples the model's null condition.

    Chunked to a memory bound: at most ``batch_size`` rows (default ``exp.eval.sample_batch``) go through the
    sampler and denoiser at once, and each chunk's samples move to the CPU before the next is drawn, so the device
    holds one chunk whatever ``n`` is. The boundaries are fixed (rows ``i * batch_size`` on) and chunk ``i`` is
    drawn with its own generator seeded :func:`chunk_seed` ``(seed, i)``: ``n <= batch_size`` is exactly one
    sampler call seeded ``seed`` (the draw before chunking), every chunk equals the unchunked draw of its rows
    with its seed, and the result depends on ``(seed, batch_size)`` only, never on the device or world size.

    A model sharded over ranks (FSDP under torchrun) is sampled by every rank (call it on all of them): each
    samples and denoises its rows of each chunk, with the noise those rows get in one process, and every rank
    gets the whole batch back. ``n`` must then be a multiple of the world size (a one-line
    :class:`~ntm.train.distributed.ShardError` otherwise); a sampler that cannot split a batch, or a chunk that does
    not split evenly, has every rank sample all of it.
    """
    chunk = exp.eval.sample_batch if batch_size is None else batch_size
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"sample: batch_size must be a positive int, got {chunk!r}")
    layout = layout_for(exp, data)
    device = next(model.parameters()).device
    built = build_denoiser(exp, denoiser) if denoise else None  # before sampling: missing weights fail fast
    seed = exp.eval.seed if seed is None else seed
    if captions is not None and getattr(model, "condition_encoder", None) is not None:
        if len(captions) != n:
            raise ValueError(f"sample: {len(captions)} captions for {n} samples")
        cond = conditioner_of(exp.conditioner).inputs(list(captions), model.dims.num_classes).to(device)
    else:
        cond = None if labels is None or model.dims.num_classes == 0 else labels.to(device)
    request = built.trajectory_request() if built is not None else False
    draw = (sampler or exp.sampler).build()
    splits = D.is_sharded(model) and draw.splits_batch
    if splits:
        D.batch_rows(n, what="sample batch")  # the one-line ShardError of a batch that does not split evenly

    def chunk_rows(start: int, stop: int) -> Tensor:
        gen = torch.Generator(device=device).manual_seed(chunk_seed(seed, start // chunk))
        count = stop - start
        world = torch.distributed.get_world_size() if splits else 1
        split = splits and count % world == 0
        rows = D.batch_rows(count, what="sample batch") if split else slice(0, count)  # within the chunk

        def run(model: nn.Module) -> Tensor:
            c = None if cond is None else cond[start:stop][rows]
            kwargs = {"rows": Rows(rows.start, rows.stop, count)} if split else {}
            out = draw(model, rows.stop - rows.start, c, generator=gen, return_trajectory=request, **kwargs)
            return (out.x if built is None else built.denoise(model, out, c)).detach()

        try:
            x = D.run_sharded(model, run)
        except torch.OutOfMemoryError:
            raise UsageError(f"sampling {count} rows at once ran out of device memory; sample fewer at a time "
                             f"(ntm sample --sample-batch N, Model.sample(batch_size=N) or eval.sample_batch; now "
                             f"{chunk})") from None
        if split:
            x = D.gather_rows(x)
        return layout.from_tokens(x).float().cpu()

    parts = [chunk_rows(start, min(start + chunk, n)) for start in range(0, n, chunk) or [0]]
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def grid_labels(exp: Experiment, data: DataSource, model: NTM) -> Tensor | None:
    """One row per class (at most 10 rows) for conditional image models; ``None`` otherwise."""
    if model.dims.num_classes == 0 or data.spec.kind != "images":
        return None
    rows = min(model.dims.num_classes, 10)
    return torch.arange(rows).repeat_interleave(exp.eval.grid_columns)


def grid_captions(exp: Experiment, data: DataSource, model: NTM) -> list[str] | None:
    """For an image model with a condition encoder: one row per distinct held-out caption (at most 8 rows, the
    first ones met), each caption repeated over the row; ``None`` otherwise or when no caption is found."""
    if getattr(model, "condition_encoder", None) is None or data.spec.kind != "images":
        return None
    rows: list[str] = []
    try:
        for batch in data.eval_batches(256, max_examples=2048):
            for caption in batch.caption or ():
                if caption and caption.strip() and caption not in rows:
                    rows.append(caption)
            if len(rows) >= 8:
                break
    except DataError:
        return None
    return [c for c in rows[:8] for _ in range(exp.eval.grid_columns)] or None


def real_examples(exp: Experiment, data: DataSource) -> Tensor | None:
    """A row of held-out images for the sample figure: one per class (classes 0.., at most a row), else the first ones.

    ``None`` for points or when the source has no held-out split. Pixels (from the image source under latents).
    """
    if data.spec.kind != "images":
        return None
    data = pixel_images(data)  # real images, not their reconstructions, under a model on latents
    columns = exp.eval.grid_columns
    wanted = list(range(min(data.spec.num_classes, columns))) if data.spec.num_classes else []
    picked: dict[int, Tensor] = {}
    rows: list[Tensor] = []
    try:
        for batch in data.eval_batches(256):
            for i in range(batch.x.shape[0]):
                if wanted and batch.label is not None:
                    label = int(batch.label[i])
                    if label in wanted and label not in picked:
                        picked[label] = batch.x[i]
                elif len(rows) < columns:
                    rows.append(batch.x[i])
            if (wanted and len(picked) == len(wanted)) or (not wanted and len(rows) == columns):
                break
    except DataError:
        return None
    chosen = [picked[k] for k in sorted(picked)] if wanted else rows
    return torch.stack(chosen) if chosen else None


def picture(exp: Experiment, data: DataSource, samples: Tensor, real: Tensor | None = None) -> Tensor:
    """Samples -> ``(C, H, W)`` in [0, 1]: an image grid, or a 2-D scatter density.

    ``real`` (images only): a row of real images shown below the samples, after a blank row.
    """
    shown = data.to_display(samples)
    if data.spec.kind == "images":
        upscale = max(1, 64 // shown.shape[-1])
        columns = exp.eval.grid_columns
        images = shown.clamp(0, 1)
        if real is not None:
            pad = (-images.shape[0]) % columns  # finish the last row of samples
            blank = torch.ones(pad + columns, *images.shape[1:], dtype=images.dtype)
            shown_real = pixel_images(data).to_display(real).clamp(0, 1)[:columns].to(images.dtype)
            images = torch.cat([images, blank, shown_real])
        return image_grid(images, nrow=columns, upscale=upscale)
    return scatter_density(shown[:, :2])


def sample_picture(
    exp: Experiment, model: NTM, data: DataSource, *, with_real: bool = False, **kwargs
) -> tuple[Tensor, Tensor, Tensor | None]:
    """``(picture, samples, labels)`` for the run's standard sample figure.

    ``with_real``: add a row of real held-out images below the samples (the final figure of a run).
    """
    labels = grid_labels(exp, data, model)
    captions = grid_captions(exp, data, model)
    if captions is not None:
        n = len(captions)
        kwargs = {**kwargs, "captions": captions}
    elif labels is not None:
        n = labels.numel()
    elif data.spec.kind == "images":
        n = exp.eval.grid_columns * 8
    else:
        n = exp.eval.num_points
    samples = sample(exp, model, data, n, labels=labels, **kwargs)
    real = real_examples(exp, data) if with_real else None
    return picture(exp, data, samples, real), samples, labels


def upgrade_saved_config(saved: dict[str, Any]) -> dict[str, Any]:
    """A saved experiment config (a checkpoint's, a run's config.json) as today's classes dump it: fields added
    since it was written appear at their defaults, older layouts are upgraded. One that no longer validates is
    returned as saved (the comparison then names what differs)."""
    try:
        return Experiment.model_validate(saved).model_dump(mode="json")
    except pydantic.ValidationError:
        return saved


def train_job(exp: Experiment, data: DataSource, resume: bool = False) -> TrainJob:
    check_condition_source(exp, data)  # before anything is built or written
    def preview(model: nn.Module, step: int) -> Tensor:
        # previews skip the score denoiser (a backward pass) to stay cheap
        return sample_picture(exp, model, data, denoise=False)[0]

    dims = dims_for(exp, data)  # read once: building (on the meta device with train.meta_init) reads no data
    return TrainJob(
        build_model=lambda: build_model(exp, data, dims),
        objective=exp.loss.build(),
        data=data,
        layout=layout_for(exp, data),
        conditioner=conditioner_of(exp.conditioner),
        train=exp.train,
        run_dir=Path(exp.resolved_run_dir),
        config=exp.model_dump(mode="json"),
        upgrade_config=upgrade_saved_config,
        resume=resume,
        preview=preview,
        initialize=None if exp.init is None else (lambda model: initialize_from(model, exp.init)),
        sharded_sampling=True,
    )
