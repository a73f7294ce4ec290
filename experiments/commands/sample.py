"""``ntm sample --run RUN``: a grid of samples (by label, or by prompt for caption-conditioned runs)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Literal

import tyro

from ntm.experiments.build import sample, sample_picture
from ntm.experiments.config import Experiment
from ntm.denoisers import DENOISERS, DenoiserConfig
from ntm.train import distributed as D
from ntm.atomic import atomic_save_npy, atomic_write_text
from ntm.viz import captioned_rows, save_png
from ntm.experiments.core import UsageError, run_tyro
from ntm.experiments.runs import denoiser_for, load_run, run_experiment, sampler_for, shard_under_torchrun


@dataclasses.dataclass(frozen=True)
class SampleArgs:
    run: Path | None = None
    """Run directory (holds config.json and checkpoints/); not needed with --checkpoint EXPORT.safetensors."""
    checkpoint: Path | None = None
    """A specific checkpoint: a file, a checkpoint directory, or an ntm export file (``ntm export``: samples with
    no run directory; default: the run's newest checkpoint)."""
    weights: Literal["ema", "raw"] = "ema"
    """EMA weights (default) or the raw training weights."""
    steps: int | None = None
    """Number of steps K (sampler.num_steps; any K the schedule defines; default: the run's sampler setting)."""
    guidance: float | None = None
    """Classifier-free guidance weight (sampler.guidance; default: the run's sampler setting)."""
    temperature: float | None = None
    """Sampling temperature (sampler.temperature; default: the run's sampler setting)."""
    denoise: bool = True
    """Apply the run's denoiser to x_{t_0}."""
    denoiser: str | None = None
    """Denoiser to apply instead of the run's: a registered name (none, score, learned: the run's distilled one)."""
    seed: int | None = None
    """Sampling seed (default: the run's eval seed)."""
    out: Path | None = None
    """Output PNG (a .npy of the samples is written beside it); default: <run>/samples/sample.png, or
    <export>-sample.png beside an export sampled without --run."""
    dry_run: bool = False
    """Print the resolved sampler config as JSON and exit."""
    prompt: tyro.conf.UseAppendAction[tuple[str, ...]] = ()
    """Captions to sample (caption-conditioned runs), one grid row each; repeatable: --prompt "two red circles"
    --prompt "a blue star". An empty prompt is the null condition (unconditional samples)."""
    prompts: Path | None = None
    """A text file of captions, one per line (blank lines skipped), sampled after any --prompt."""
    per_prompt: int | None = None
    """Samples per prompt (default: the run's eval.grid_columns); any number: they are drawn in chunks
    (--sample-batch) and all go to the .npy, while the picture shows at most 32 per prompt and 64 prompts."""
    sample_batch: int | None = None
    """Most samples per sampler call (default: the run's eval.sample_batch): lower it when a chunk does not fit in
    device memory. Samples beyond the first chunk depend on it (chunk i is seeded from the seed and i)."""


def read_prompts(a: SampleArgs) -> list[str]:
    """The prompts of ``ntm sample``: every --prompt, then the lines of --prompts FILE."""
    prompts = list(a.prompt)
    if a.prompts is not None:
        if not a.prompts.is_file():
            raise FileNotFoundError(f"--prompts {a.prompts}: no such file")
        try:
            lines = a.prompts.read_text().splitlines()
        except UnicodeDecodeError:
            raise UsageError(f"--prompts {a.prompts}: not a UTF-8 text file") from None
        prompts += [line.strip() for line in lines if line.strip()]
        if not prompts:
            raise UsageError(f"--prompts {a.prompts}: the file holds no prompt")
    return prompts


def check_prompts(exp: Experiment) -> None:
    """``--prompt`` needs a run whose conditioner reads captions (one line otherwise)."""
    from ntm.conditioning import CONDITIONERS

    if exp.conditioner.reads != "caption":
        raise UsageError(f"--prompt needs a caption-conditioned run; {exp.name} uses conditioner "
                         f"{CONDITIONERS.name_of(exp.conditioner)!r} (sample labelled runs without --prompt)")


PICTURE_PROMPTS = 64
"""Most prompts (rows) the prompt picture shows; the .npy and .txt hold every sample."""
PICTURE_PER_PROMPT = 32
"""Most samples per prompt the prompt picture shows."""


def output_path(a: SampleArgs, prompts: list[str]) -> Path:
    """Where the PNG goes (the .npy and, for prompts, the .txt beside it); a one-line error, before anything is
    sampled, when it or a sibling output names a directory."""
    name = "prompts.png" if prompts else "sample.png"
    out = a.out or (Path(a.run) / "samples" / name if a.run is not None else
                    a.checkpoint.with_name(f"{a.checkpoint.stem}-{name}"))
    if out.is_dir():
        raise UsageError(f"--out {out} is a directory; name the PNG file to write (e.g. {out / name})")
    for sibling in (out.with_suffix(".npy"), *((out.with_suffix(".txt"),) if prompts else ())):
        if sibling.is_dir():
            raise UsageError(f"--out {out}: {sibling} (the samples beside the PNG) is a directory; name another file")
    return out


def prompt_picture(data, samples, prompts: list[str], per: int):
    """The prompt grid: one row per prompt (at most :data:`PICTURE_PROMPTS`), its first samples (at most
    :data:`PICTURE_PER_PROMPT`); only the samples shown are decoded for display."""
    shown_per = min(per, PICTURE_PER_PROMPT)
    rows = []
    for i, p in enumerate(prompts[:PICTURE_PROMPTS]):
        shown = data.to_display(samples[i * per : i * per + shown_per]).clamp(0, 1)
        rows.append((p, shown))
    upscale = max(1, 64 // rows[0][1].shape[-1])
    return captioned_rows(rows, upscale=upscale)


def main(args: list[str]) -> int:
    a = run_tyro(tyro.cli, SampleArgs, prog="ntm sample", argv=args)
    if a.sample_batch is not None and a.sample_batch < 1:
        raise UsageError(f"--sample-batch must be >= 1, got {a.sample_batch}")
    exp = run_experiment(a.run, a.checkpoint)
    sampler = sampler_for(exp, num_steps=a.steps, guidance=a.guidance, temperature=a.temperature)
    if a.steps is not None:
        schedule = exp.model.process.schedule.build()
        if not schedule.supports(a.steps):
            raise UsageError(f"--steps {a.steps}: the schedule does not define K = {a.steps}")
    denoiser = exp.denoiser
    if a.denoiser is not None:  # the run's own config when it names the same variant, else that variant's defaults
        if not a.denoise:
            raise UsageError("--denoiser and --no-denoise exclude each other")
        entry = DENOISERS.get(a.denoiser)
        denoiser = exp.denoiser if type(exp.denoiser) is entry.config_cls else entry.config_cls()
    if isinstance(denoiser, DenoiserConfig):  # trained weights under --run (wherever it moved) or in the export
        denoiser = denoiser_for(exp, a.run if a.run is not None else a.checkpoint, denoiser)
    prompts = read_prompts(a)
    if prompts:
        check_prompts(exp)
    if a.per_prompt is not None and (a.per_prompt < 1 or not prompts):
        raise UsageError("--per-prompt needs --prompt/--prompts and a value >= 1")
    out = output_path(a, prompts)
    if a.dry_run:
        print(json.dumps(exp.replace(sampler=sampler).model_dump(mode="json")["sampler"], indent=2))
        return 0
    exp, data, model = load_run(a.run, a.checkpoint, a.weights)
    ctx, model = shard_under_torchrun(exp, model)
    try:  # under torchrun every rank samples its rows of the batch; rank 0 writes
        if prompts:
            per = a.per_prompt or exp.eval.grid_columns
            captions = [p for p in prompts for _ in range(per)]
            samples = sample(exp, model, data, len(captions), captions=captions, sampler=sampler, denoise=a.denoise,
                             denoiser=denoiser, seed=a.seed, batch_size=a.sample_batch)
            image = prompt_picture(data, samples, prompts, per)
        else:
            image, samples, labels = sample_picture(exp, model, data, sampler=sampler, denoise=a.denoise,
                                                    denoiser=denoiser, seed=a.seed, batch_size=a.sample_batch,
                                                    with_real=True)
    except BaseException:
        D.shutdown(ctx, clean=False)
        raise
    D.shutdown(ctx)
    if not ctx.is_main:
        return 0
    # each output is written to a temporary name beside it and renamed complete (ntm.atomic)
    atomic_save_npy(out.with_suffix(".npy"), samples.numpy())
    if prompts:
        atomic_write_text(out.with_suffix(".txt"), "".join(f"{c}\n" for c in captions))
    save_png(image, out)
    shown = ""
    if prompts and (len(prompts) > PICTURE_PROMPTS or per > PICTURE_PER_PROMPT):
        shown = (f"; the picture shows {min(per, PICTURE_PER_PROMPT)} per prompt of the first "
                 f"{min(len(prompts), PICTURE_PROMPTS)} prompts")
    print(f"wrote {out} and {out.with_suffix('.npy')} ({samples.shape[0]} samples"
          + (f", {len(prompts)} prompts: {out.with_suffix('.txt')} holds each sample's caption" if prompts else "")
          + f"{shown})")
    return 0


