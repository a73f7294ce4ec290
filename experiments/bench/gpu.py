"""The imagenet-paper training step on one GPU: throughput, MFU, memory, bf16 vs fp32 NLL, sampling latency.

    ntm bench gpu --out runs/gpu-bench                          # about 3-5 minutes on one H100/H200
    ntm bench gpu --out /tmp/gb --tiny --device cpu             # a smoke run of every part on CPU

Random data of the model's shape (latents at unit scale ``(B, 256, 128)`` and class labels; no dataset, no
autoencoder) through the preset's model and loss, one device, no process group. Parts, each written to
``DIR/gpu_bench.json`` and ``DIR/gpu_bench.md`` as soon as it is done (a run cut short keeps what it measured):

1. **Training step** (:func:`ntm.train.step.train_step`, the loop's own step -- forward through the loss, backward,
   clipping, AdamW, EMA -- at ``--batch`` examples) in bf16 autocast: eager, full activation checkpointing (every
   transformer block recomputed in the backward pass), eager with ``torch.compile`` of the blocks, and checkpointing
   compiled too when compiling helped. Per setting: seconds per step (median of ``--steps`` after ``--warmup``),
   examples/s, image tokens/s (examples x N), model TFLOP/s and MFU, peak memory
   (``torch.cuda.max_memory_allocated`` less what was allocated before the setting's model was built) next to
   :func:`ntm.experiments.bench.scaling.memory_estimate`. Model FLOPs per example are the analytic count of
   :mod:`ntm.experiments.bench.scaling` (``train_flops``; also reported: ``torch.utils.flop_counter`` on one example, a check
   of the formula). MFU = model FLOP/s / ``--peak-tflops`` (default: 989 dense bf16 on H100/H200, from the device
   name; the target is 40 %).
2. **bf16 vs fp32 NLL**: the trained eager model's loss (trajectory NLL, bits/dim) on 4 fixed batches with the
   same noise, in float32 (TF32 off) and under bf16 autocast: absolute and relative differences.
3. **Sampling latency** at batch 1 and ``--sample-batch`` (median of 3): NTM@4 (ancestral, decoded through the
   transporter's sequential inverse; no denoiser), its 4 predictor steps alone (``u``-space), and flow matching
   with Euler@50 over a velocity transformer of the predictor's depth, width and heads (random weights: the cost
   of sampling does not depend on their values).

Without CUDA (and without ``--device cpu``) it stops at once with one line and status 2.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import statistics
import time
from pathlib import Path
from collections.abc import Callable
from typing import Any, Literal

import torch

from ntm.experiments.core import UsageError

TARGET_MFU = 0.40


@dataclasses.dataclass(frozen=True)
class Setting:
    name: str
    checkpointing: bool
    compile: bool


SETTINGS = (Setting("bf16", False, False), Setting("bf16 + checkpointing", True, False),
            Setting("bf16 + compile", False, True), Setting("bf16 + checkpointing + compile", True, True))


@dataclasses.dataclass(frozen=True)
class GpuArgs:
    """The loop's training step (tokens/s, MFU, memory per setting), bf16 vs fp32 NLL and NTM@4 latency on one GPU
    (about 3-5 minutes on an H100/H200; ``--tiny --device cpu`` is the smoke run of every part)."""

    out: Path
    """Output directory (gpu_bench.json, gpu_bench.md)."""
    preset: str = "imagenet-paper"
    """The preset whose model is measured."""
    batch: int = 32
    """Examples per training step."""
    steps: int = 8
    """Timed training steps per setting."""
    warmup: int = 3
    """Untimed steps first (compiled settings: 2 more)."""
    sample_batch: int = 16
    """Batch of the batched sampling timing."""
    compile: Literal["auto", "on", "off"] = "auto"
    """Measure the torch.compile settings (auto: on CUDA)."""
    peak_tflops: float | None = None
    """Dense bf16 peak of the device, TFLOP/s (default: from the device name)."""
    device: str = "cuda"
    """cuda, or cpu (with --tiny: the smoke run)."""
    tiny: bool = False
    """Shrink the model and the token count (smoke runs)."""
    seed: int = 0
    """Seed of the model and the data."""


def peak_tflops(device: torch.device, given: float | None) -> float | None:
    """``given``, else the dense bf16 peak of a known device name (:data:`ntm.experiments.bench.scaling.PEAK_TFLOPS`)."""
    from ntm.experiments.bench.scaling import PEAK_TFLOPS

    if given is not None:
        return given
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_TFLOPS.items() if k in name), None)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_ms(fn: Callable[[], Any], device: torch.device, repeats: int = 3, warmup: int = 1) -> float:
    from ntm.eval.timing import measure

    return float(measure(fn, repeats=repeats, warmup=warmup, device=device, track_memory=False)["wall_ms"])


class Bench:
    def __init__(self, args: GpuArgs) -> None:
        from ntm.experiments.presets import PRESETS
        from ntm.experiments.bench.scaling import meta_model, model_dims, param_counts, tiny_experiment, train_flops

        self.args = args
        self.device = torch.device(args.device)
        exp = PRESETS[args.preset]
        if args.tiny:
            exp = tiny_experiment(exp).replace(patch_size=exp.patch_size * 4)  # 16 tokens instead of 256
        self.exp = exp
        self.dims = model_dims(exp)
        meta = meta_model(exp, self.dims)
        try:
            self.flops = train_flops(exp, meta)
        except NotImplementedError:  # components without a formula: the flop counter's count (in run())
            self.flops = None
        self.params = param_counts(meta)
        self.peak = peak_tflops(self.device, args.peak_tflops)
        self.compile = args.compile == "on" or (args.compile == "auto" and self.device.type == "cuda")
        self.out = args.out
        self.result: dict[str, Any] = {
            "preset": args.preset, "tiny": args.tiny, "device": self._device_name(), "torch": torch.__version__,
            "precision": "bf16" if self.device.type == "cuda" else "fp32 (autocast is CUDA-only, as in the loop)",
            "batch": args.batch, "tokens": self.dims.num_tokens, "token_dim": self.dims.token_dim,
            "steps_K": list(exp.model.process.steps), "params": self.params,
            "train_flops_per_example": self.flops, "peak_tflops": self.peak, "target_mfu": TARGET_MFU,
            "train": [], "nll": None, "sampling": [],
        }

    def _device_name(self) -> str:
        return torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "cpu"

    def save(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "gpu_bench.json").write_text(json.dumps(self.result, indent=2) + "\n")
        (self.out / "gpu_bench.md").write_text(report(self.result))

    # -- pieces ---------------------------------------------------------------------------------------------
    def model(self, seed: int = 0):
        """The preset's model with fresh weights (seeded), built on the device: no host copy of the weights."""
        torch.manual_seed(seed)
        encoder = getattr(self.exp.conditioner, "encoder", None)
        with torch.device(self.device):
            return self.exp.model.build(self.dims, condition_encoder=None if encoder is None else encoder(self.dims))

    def batch(self, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(n, self.dims.num_tokens, self.dims.token_dim, generator=g)
        labels = torch.randint(0, self.dims.num_classes, (n,), generator=g) if self.dims.num_classes else None
        return x.to(self.device), labels

    def counted_flops(self) -> float:
        """``torch.utils.flop_counter`` over one training example's forward and backward pass."""
        from torch.nn.attention import SDPBackend, sdpa_kernel
        from torch.utils.flop_counter import FlopCounterMode

        model = self.model()
        x, labels = self.batch(1, 0)
        objective = self.exp.loss.build()
        cond = None if labels is None else labels.to(self.device)
        # the counter knows the CUDA attention kernels but not the CPU ones: on CPU, attention runs as matmuls
        kernels = sdpa_kernel([SDPBackend.MATH]) if self.device.type == "cpu" else contextlib.nullcontext()
        with kernels, FlopCounterMode(display=False) as counter, self.autocast():
            loss, _ = model(x, cond, objective, torch.Generator(device=self.device).manual_seed(0))
            loss.backward()
        del model
        return float(counter.get_total_flops())

    def autocast(self):
        return torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device.type == "cuda")

    # -- parts ----------------------------------------------------------------------------------------------
    def train_setting(self, setting: Setting):
        """Time ``setting``; returns its row and the trained model."""
        from ntm.data.base import Batch
        from ntm.experiments.bench.scaling import (TokenBatches, bench_state, checkpoint_blocks, compile_blocks,
                                                   memory_estimate)
        from ntm.train.step import train_step

        base = 0
        if self.device.type == "cuda":  # the peak counts what this setting allocates (weights, state, activations)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
            base = torch.cuda.memory_allocated(self.device)
        model = self.model(self.args.seed)
        if setting.checkpointing:
            checkpoint_blocks(model)
        if setting.compile:
            compile_blocks(model)
        state = bench_state(self.exp, model, device=self.device, layout=TokenBatches(), precision="bf16")
        x, labels = self.batch(self.args.batch, self.args.seed)
        batch = Batch(x=x, label=labels)
        started = time.perf_counter()
        for _ in range(self.args.warmup + (2 if setting.compile else 0)):
            train_step(state, batch)
        _sync(self.device)
        warm_s = time.perf_counter() - started
        times, losses = [], []
        for _ in range(self.args.steps):
            t0 = time.perf_counter()
            losses.append(train_step(state, batch).loss)  # reads the loss back: synchronises, as the loop does
            _sync(self.device)
            times.append(time.perf_counter() - t0)
        step_s = statistics.median(times)
        examples = self.args.batch / step_s
        model_tflops = self.flops["total"] * examples / 1e12
        estimate = memory_estimate(self.exp, gpus=1, micro_batch=self.args.batch,
                                   activation_checkpointing="full" if setting.checkpointing else "none",
                                   precision="bf16" if self.device.type == "cuda" else "fp32")
        row = {"setting": setting.name, "checkpointing": setting.checkpointing, "compile": setting.compile,
               "warmup_s": warm_s, "step_s": step_s, "examples_per_s": examples,
               "tokens_per_s": examples * self.dims.num_tokens, "model_tflops_per_s": model_tflops,
               "mfu": None if self.peak is None else model_tflops / self.peak,
               "peak_memory_gib": (torch.cuda.max_memory_allocated(self.device) - base) / 2**30
               if self.device.type == "cuda" else None,
               "estimated_memory_gib": estimate["total"] / 2**30, "last_loss": losses[-1],
               "loss_finite": all(math.isfinite(v) for v in losses)}
        return row, model

    def nll_agreement(self, model, batches: int = 4) -> dict:
        """The loss (trajectory NLL, bits/dim) on fixed batches and noise: float32 vs bf16 autocast."""
        objective = self.exp.loss.build()
        model.eval()
        old = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = False
        pairs = []
        try:
            with torch.no_grad():
                for i in range(batches):
                    x, labels = self.batch(self.args.batch, 1000 + i)
                    cond = None if labels is None else labels.to(self.device)
                    values = []
                    for bf16 in (False, True):
                        gen = torch.Generator(device=self.device).manual_seed(2000 + i)
                        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16 and self.device.type == "cuda"):
                            loss, metrics = model(x, cond, objective, gen)
                        values.append(float(metrics.get("nll_traj_bpd", loss)))
                    pairs.append(values)
        finally:
            torch.backends.cuda.matmul.allow_tf32 = old
        diffs = [abs(b - a) for a, b in pairs]
        return {"batches": batches, "fp32_bpd": [a for a, _ in pairs], "bf16_bpd": [b for _, b in pairs],
                "max_abs_diff_bpd": max(diffs), "max_rel_diff": max(d / abs(a) for d, (a, _) in zip(diffs, pairs)),
                "autocast": self.device.type == "cuda"}

    def sampling(self, ntm) -> list[dict]:
        """Latency at batch 1 and throughput at ``--sample-batch``: NTM@4 decoded and in u-space, flow matching
        Euler@50 over a velocity transformer of the predictor's size."""
        from ntm.predictors import PosteriorPredictorConfig, VelocityTransformerConfig
        from ntm.samplers import AncestralConfig, EulerConfig
        from ntm.transporters import IdentityConfig

        ntm = ntm.eval()
        pred = self.exp.model.predictor
        net = pred if hasattr(pred, "depth") else pred.xhat  # a transformer predictor, or a posterior's x-hat net
        fm_cfg = self.exp.model.replace(
            transporter=IdentityConfig(),
            predictor=PosteriorPredictorConfig(xhat=VelocityTransformerConfig(
                depth=net.depth, width=net.width, num_heads=net.num_heads, mlp_ratio=net.mlp_ratio)))
        torch.manual_seed(0)
        with torch.device(self.device):
            fm = fm_cfg.build(self.dims).eval()
        ancestral, euler = AncestralConfig(num_steps=4).build(), EulerConfig(num_steps=50).build()

        def labels(n: int):
            return (torch.arange(n, device=self.device) % self.dims.num_classes) if self.dims.num_classes else None

        def gen():
            return torch.Generator(device=self.device).manual_seed(0)

        runs = {
            "ntm-K4 (decoded)": (ntm, 4, lambda n: ancestral(ntm, n, labels(n), generator=gen())),
            "ntm-K4 (u-space, no decoding)": (ntm, 4, lambda n: ancestral(ntm, n, labels(n), generator=gen(),
                                                                          return_trajectory="u")),
            "flow-matching-euler50": (fm, 50, lambda n: euler(fm, n, labels(n), generator=gen())),
        }
        rows = []
        for name, (model, steps, fn) in runs.items():
            with torch.no_grad(), self.autocast():
                one = _median_ms(lambda fn=fn: fn(1), self.device)
                many = _median_ms(lambda fn=fn: fn(self.args.sample_batch), self.device, repeats=2)
            rows.append({"model": name, "steps": steps, "params": sum(p.numel() for p in model.parameters()),
                         "tokens": self.dims.num_tokens, "latency_ms": one, "batch": self.args.sample_batch,
                         "samples_per_s": self.args.sample_batch / (many / 1000)})
        fm_row = rows[-1]
        for r in rows:
            r["latency_vs_fm"] = fm_row["latency_ms"] / r["latency_ms"]
        return rows

    def _compile_helps(self) -> bool:
        """Whether compiling made the eager bf16 step faster (then checkpointing is measured compiled too)."""
        rows = {r["setting"]: r for r in self.result["train"] if "error" not in r}
        eager, compiled = rows.get("bf16"), rows.get("bf16 + compile")
        return bool(eager and compiled and compiled["examples_per_s"] > eager["examples_per_s"])

    def run(self) -> dict:
        counted = self.counted_flops()
        self.result["train_flops_counted_per_example"] = counted
        if self.flops is None:
            self.flops = self.result["train_flops_per_example"] = {"total": counted, "source": "flop counter"}
        self.save()
        trained = None
        for setting in SETTINGS:
            if setting.compile and not self.compile:
                continue
            if setting.compile and setting.checkpointing and not self._compile_helps():
                continue
            try:
                row, model = self.train_setting(setting)
            except torch.cuda.OutOfMemoryError as e:
                row, model = {"setting": setting.name, "error": f"out of memory: {str(e).splitlines()[0]}"}, None
            except Exception as e:  # a compiler failure costs its rows, not the benchmark
                if not setting.compile:
                    raise
                first = (str(e).strip().splitlines() or [""])[0][:300]
                row, model = {"setting": setting.name, "error": f"compile failed: {type(e).__name__}: {first}"}, None
            self.result["train"].append(row)
            print(_train_line(row), flush=True)
            if trained is None and model is not None and not setting.checkpointing and not setting.compile:
                trained = model
            else:
                del model
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            self.save()
        if trained is None:
            trained = self.model(self.args.seed)
        self.result["nll"] = self.nll_agreement(trained)
        print(f"nll: fp32 vs bf16 max |diff| {self.result['nll']['max_abs_diff_bpd']:.2e} bits/dim", flush=True)
        self.save()
        self.result["sampling"] = self.sampling(trained)
        self.save()
        return self.result


def _train_line(row: dict) -> str:
    if "error" in row:
        return f"{row['setting']}: {row['error']}"
    mfu = "" if row["mfu"] is None else f", MFU {100 * row['mfu']:.1f} %"
    mem = "" if row["peak_memory_gib"] is None else f", peak {row['peak_memory_gib']:.1f} GiB"
    return (f"{row['setting']}: {row['step_s'] * 1000:.0f} ms/step, {row['examples_per_s']:.1f} examples/s, "
            f"{row['tokens_per_s']:.0f} tokens/s, {row['model_tflops_per_s']:.1f} TFLOP/s{mfu}{mem}")


def report(r: dict) -> str:
    """The markdown of ``gpu_bench.json``."""
    p = r["params"]
    counted = r.get("train_flops_counted_per_example")
    lines = [
        f"# {r['preset']} on {r['device']} (torch {r['torch']}{', tiny' if r['tiny'] else ''})", "",
        f"{r['tokens']} tokens x {r['token_dim']}, K = {r['steps_K']}, {p['total'] / 1e6:.1f} M parameters "
        f"(transporter {p.get('transporter', 0) / 1e6:.1f} M, predictor {p.get('predictor', 0) / 1e6:.1f} M); "
        f"training FLOPs per example {r['train_flops_per_example']['total'] / 1e12:.3f} TFLOP (formula)"
        + ("" if counted is None else f", {counted / 1e12:.3f} TFLOP (flop counter)")
        + f"; batch {r['batch']}, {r['precision']}; peak {r['peak_tflops'] or '?'} TFLOP/s, MFU target "
          f"{100 * r['target_mfu']:.0f} %.",
        "", "## Training step", "",
        "| setting | ms/step | examples/s | tokens/s | model TFLOP/s | MFU | peak memory (GiB) | estimated (GiB) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for t in r["train"]:
        if "error" in t:
            lines.append(f"| {t['setting']} | {t['error']} | | | | | | |")
            continue
        mfu = "n/a" if t["mfu"] is None else f"{100 * t['mfu']:.1f} %"
        peak = "n/a" if t["peak_memory_gib"] is None else f"{t['peak_memory_gib']:.1f}"
        lines.append(f"| {t['setting']} | {t['step_s'] * 1000:.1f} | {t['examples_per_s']:.1f} | "
                     f"{t['tokens_per_s']:.0f} | {t['model_tflops_per_s']:.1f} | {mfu} | {peak} | "
                     f"{t['estimated_memory_gib']:.1f} |")
    if r["nll"]:
        n = r["nll"]
        lines += ["", "## bf16 vs fp32 NLL", "",
                  f"Trajectory NLL on {n['batches']} fixed batches (bits/dim), fp32: "
                  + ", ".join(f"{v:.4f}" for v in n["fp32_bpd"]) + "; bf16 autocast: "
                  + ", ".join(f"{v:.4f}" for v in n["bf16_bpd"])
                  + f". Largest difference {n['max_abs_diff_bpd']:.2e} bits/dim ({100 * n['max_rel_diff']:.3f} %)."]
    if r["sampling"]:
        lines += ["", "## Sampling", "",
                  "| model | steps | params | tokens | latency, batch 1 (ms) | FM latency / this | samples/s |",
                  "|---|---|---|---|---|---|---|"]
        lines += [f"| {s['model']} | {s['steps']} | {s['params'] / 1e6:.1f} M | {s['tokens']} | {s['latency_ms']:.1f} "
                  f"| {s['latency_vs_fm']:.2f}x | {s['samples_per_s']:.1f} (batch {s['batch']}) |"
                  for s in r["sampling"]]
    return "\n".join(lines) + "\n"


def run(args: GpuArgs) -> int:
    """Measure (see the module docstring), write ``gpu_bench.json`` and ``gpu_bench.md`` and print the report."""
    from ntm.experiments.presets import PRESETS

    for name in ("batch", "steps", "sample_batch"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.preset not in PRESETS:
        raise UsageError(f"--preset: unknown preset {args.preset!r}; presets: {', '.join(PRESETS)}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError("no CUDA device here; this benchmark needs a GPU (--tiny --device cpu: the CPU smoke run)")
    if args.device.startswith("cuda"):
        torch.cuda.set_device(torch.device(args.device))
    bench = Bench(args)
    bench.run()
    print(report(bench.result), end="")
    return 0
