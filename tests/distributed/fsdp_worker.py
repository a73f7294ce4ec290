"""The two-rank half of ``test_fsdp_features.py``, run under ``torchrun --nproc_per_node 2`` (gloo, CPU).

``python -m torch.distributed.run ... tests/distributed/fsdp_worker.py REPORT TOY_RUN ODD_RUN REF_RUN OUT_DIR``

Every check runs on both ranks (each takes part in the collectives); rank 0 writes ``REPORT`` (JSON) with what
it measured, and the test asserts on it. Everything one-process that a check compares with is computed here on
rank 0 from the same weights (an unsharded model is the one-process path). The checks, in order:

1. meta-device init: built on meta, sharded (flat mesh; HSDP meshes 2 x 1 and 1 x 2), materialized with the
   seed, gathered == the eager build with that seed, bitwise;
2. activation checkpointing (full, selective): loss and every gradient bitwise equal to none;
   bf16 mixed precision: the loss within the documented 2 % of float32;
   HSDP 2 x 1 and 1 x 2: loss and gradients equal to the flat mesh up to float summation order;
3. sharded sampling (ancestral with guidance and the score denoiser, on an image model; Euler on a velocity
   model) == the unsharded model's samples for the same seed; the sharded held-out NLL == the unsharded one;
4. the training loop with meta_init, full activation checkpointing, an HSDP 1 x 2 mesh and previews: its losses
   (``TOY_RUN``/metrics.jsonl, written here) are compared with ``REF_RUN`` (one process) by the test;
5. ``ntm sample`` on ``ODD_RUN`` (63 points over 2 ranks): exit 2, one error line, nothing written; then on
   ``REF_RUN``: rank 0 writes ``OUT_DIR``/sample2.npy (the test compares it with the one-process command's).
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from ntm.eval.nll import heldout_nll
from ntm.experiments.build import build_model, data_for, dims_for, layout_for, sample, train_job
from ntm.experiments.presets import PRESETS
from ntm.testing import perturb_
from ntm.train import distributed as D
from ntm.train.loop import train
from ntm.train.step import noise_generator

MP_TOLERANCE = 2e-2
"""Relative loss difference bf16 mixed precision may make (docs/quickstart.md, "Scale out")."""


def tiny(name: str, **train_fields):
    """A preset with a tiny model (and ``train_fields`` set)."""
    exp = PRESETS[name]
    model = exp.model
    if hasattr(model.transporter, "width"):
        model = model.replace(transporter=model.transporter.replace(width=16, num_heads=2, num_blocks=2,
                                                                    layers_per_block=1))
    predictor = model.predictor
    net = predictor.xhat if hasattr(predictor, "xhat") else predictor
    net = net.replace(width=16, depth=2, num_heads=2)
    model = model.replace(predictor=predictor.replace(xhat=net) if hasattr(predictor, "xhat") else net)
    return exp.replace(model=model, train=exp.train.replace(device="cpu", **train_fields))


def meta_init_checks(ctx: D.DistContext) -> dict:
    out = {}
    exp = tiny("digits-ntm")
    dims = dims_for(exp, data_for(exp))
    torch.manual_seed(11)
    eager = build_model(exp, None, dims).state_dict()
    for label, shape in (("flat", None), ("hsdp-2x1", (2, 1)), ("hsdp-1x2", (1, 2))):
        with torch.device("meta"):
            model = build_model(exp, None, dims)
        model = D.wrap(model, ctx, "fsdp", mesh=D.device_mesh(ctx, shape), seed=11)
        full = D.full_state_dict(model)
        if ctx.is_main:
            out[label] = sorted(k for k in eager if not torch.equal(eager[k], full[k]))
            out[f"{label}-names"] = sorted(full) == sorted(eager)
    return out


def step_checks(ctx: D.DistContext) -> dict:
    """One forward/backward on each rank's half of a batch, perturbed weights (else the zero-initialised read-outs
    make the loss independent of most weights)."""
    exp = tiny("digits-ntm")
    data = data_for(exp)
    dims = dims_for(exp, data)
    layout = layout_for(exp, data)
    objective = exp.loss.build()
    batch = next(iter(data.eval_batches(16)))
    x = layout.to_tokens(batch.x)[D.batch_rows(16)]
    labels = batch.label[D.batch_rows(16)]

    def run(ac: str = "none", mp: str = "none", mesh=None) -> tuple[float, list[torch.Tensor]]:
        torch.manual_seed(3)
        model = perturb_(build_model(exp, None, dims), 0.05, 7)
        D.checkpoint_activations(model, ac)
        model = D.wrap(model, ctx, "fsdp", mesh=D.device_mesh(ctx, mesh), mixed_precision=mp)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=mp == "bf16"):
            loss, _ = model(x, labels, objective, noise_generator(torch.device("cpu"), 0, 0, ctx.rank))
            loss.backward()
        return ctx.all_mean(loss.item()), [D.full_tensor(p.grad).clone() for p in model.parameters()]

    base_loss, base_grads = run()
    out = {"loss": base_loss}
    for ac in ("full", "selective"):
        loss, grads = run(ac=ac)
        out[f"ac-{ac}"] = {"loss_equal": loss == base_loss,
                           "grads_equal": all(torch.equal(a, b) for a, b in zip(base_grads, grads, strict=True))}
    loss, _ = run(mp="bf16")
    out["bf16_rel"] = abs(loss - base_loss) / abs(base_loss)
    for shape in ((2, 1), (1, 2)):
        loss, grads = run(mesh=shape)
        out[f"hsdp-{shape[0]}x{shape[1]}"] = {
            "loss_rel": abs(loss - base_loss) / abs(base_loss),
            "grad_err": max((a - b).abs().max().item() for a, b in zip(base_grads, grads, strict=True)),
        }
    return out


def sampling_checks(ctx: D.DistContext) -> dict:
    """The same EMA-like weights, sharded over both ranks vs unsharded on rank 0."""
    out = {}
    for name, n in (("digits-ntm", 20), ("digits-flow-matching", 4)):
        exp = tiny(name)
        exp = exp.replace(sampler=exp.sampler.replace(num_steps=4)) if name.endswith("matching") else exp
        data = data_for(exp)
        dims = dims_for(exp, data)
        torch.manual_seed(5)
        plain = perturb_(build_model(exp, None, dims), 0.05, 9).eval()
        torch.manual_seed(5)
        model = perturb_(build_model(exp, None, dims), 0.05, 9).requires_grad_(False)
        model = D.enable_sharded_calls(D.wrap(model, ctx, "fsdp", reshard_after_forward=True)).eval()
        labels = torch.arange(n) % 11  # 10 = the null label
        got = sample(exp, model, data, n, labels=labels, seed=21)
        nll = heldout_nll(model, data, layout_for(exp, data), [4], batch_size=7, max_examples=20, seed=3)
        if ctx.is_main:
            want = sample(exp, plain, data, n, labels=labels, seed=21)
            want_nll = heldout_nll(plain, data, layout_for(exp, data), [4], batch_size=7, max_examples=20, seed=3)
            out[name] = {
                "sample_err": (got - want).abs().max().item(),
                "sample_scale": want.abs().max().item(),
                "nll_rel": abs(nll[4]["nll_traj_bpd"] - want_nll[4]["nll_traj_bpd"]) / want_nll[4]["nll_traj_bpd"],
                "bound_rel": abs(nll[4]["bound_bpd"] - want_nll[4]["bound_bpd"]) / want_nll[4]["bound_bpd"],
            }
    return out


def loop_check(run_dir: Path) -> None:
    """The real training loop: meta init, full activation checkpointing, HSDP 1 x 2, a preview; then the
    sharded final model (kept up by sharded_sampling) is used and closed."""
    exp = PRESETS["toy-ntm"]
    exp = tiny("toy-ntm", steps=2, batch_size=32, warmup_steps=0, log_every=1, sample_every=2, checkpoint_every=2,
               meta_init=True, activation_checkpointing="full", mesh=(1, 2)).replace(
        run_dir=str(run_dir), eval=exp.eval.replace(num_points=16, num_examples=16))
    data = data_for(exp)
    result = train(train_job(exp, data))
    try:
        assert D.is_sharded(result.ema_model), "the result's EMA model is not sharded"
        sample(exp, result.ema_model, data, 8, seed=1)  # every rank takes part
    finally:
        result.close()


def cli_sample(args: list[str]) -> tuple[int, str]:
    from ntm.experiments.cli import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = main(["sample", *args])
    return rc, err.getvalue()


def run() -> None:
    report_path, toy_run, odd_run, ref_run, out_dir = map(Path, sys.argv[1:6])
    ctx = D.init("cpu")
    # The loop and the commands end by destroying the process group; one group serves them all here (a process
    # cannot join a second one under torchrun's store), destroyed once at the end.
    real_shutdown = D.shutdown
    D.shutdown = lambda ctx, clean=True: dist.barrier() if clean else None
    report = {"meta_init": meta_init_checks(ctx), "step": step_checks(ctx), "sampling": sampling_checks(ctx)}
    loop_check(toy_run)
    rc, err = cli_sample(["--run", str(odd_run), "--out", str(out_dir / "odd.png")])
    report["odd"] = {"rc": rc, "stderr": err, "written": sorted(p.name for p in out_dir.glob("odd*"))}
    rc, err = cli_sample(["--run", str(ref_run), "--out", str(out_dir / "sample2.png")])
    report["ok"] = {"rc": rc, "stderr": err[-2000:]}
    if ctx.is_main:
        report["mp_tolerance"] = MP_TOLERANCE
        report_path.write_text(json.dumps(report, indent=1))
    real_shutdown(ctx)


if __name__ == "__main__":
    run()
