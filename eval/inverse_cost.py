"""Cost of the TarFlow inverse vs token count: KV-cached sequential decoding against naive recomputation.

    python -m ntm.eval.inverse_cost --tokens 16 32 64 128

Both decode token by token; the cached one feeds one new token per step
(attention over the cache), the naive one re-runs the whole prefix. Prints
wall time per call and the naive/cached ratio, which grows with N when the
cached work is linear in tokens and the naive one quadratic. Ratios, not
absolute times, are the comparable numbers (both measured in one run).
"""

from __future__ import annotations

import dataclasses

import torch
import tyro

from ntm.eval.timing import measure
from ntm.spec import ModelDims
from ntm.transporters import TarFlowConfig


@dataclasses.dataclass(frozen=True)
class Args:
    tokens: tuple[int, ...] = (16, 32, 64, 128)
    """Token counts N to time."""
    batch: int = 16
    """Batch size."""
    token_dim: int = 4
    """Channels per token."""
    repeats: int = 3
    """Timed repetitions (median)."""
    perturb: float = 0.05
    """Std of the noise added to every weight (a trained-like, non-identity map)."""


def main(args: Args) -> list[dict]:
    rows = []
    torch.manual_seed(0)
    for n in args.tokens:
        model = TarFlowConfig(width=64, num_heads=4).build(ModelDims(n, args.token_dim)).eval()
        with torch.no_grad():  # move off the zero-initialised identity so Jacobi needs real sweeps
            for p in model.parameters():
                p.add_(torch.randn_like(p) * args.perturb)
        u = torch.randn(args.batch, n, args.token_dim)
        t = torch.rand(args.batch)
        row = {"tokens": n}
        with torch.no_grad():
            for method in ("sequential", "naive", "jacobi"):
                row[method] = measure(lambda m=method: model.inverse(u, t, method=m), repeats=args.repeats,
                                      warmup=1, track_memory=False)["wall_ms"]
        row["naive/sequential"] = row["naive"] / row["sequential"]
        rows.append(row)
        print(f"N={n:4d}  sequential {row['sequential']:8.1f} ms  naive {row['naive']:8.1f} ms  "
              f"jacobi {row['jacobi']:8.1f} ms  naive/sequential {row['naive/sequential']:.2f}", flush=True)
    return rows


if __name__ == "__main__":
    main(tyro.cli(Args))
