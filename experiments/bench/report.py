"""The bench's reports: ``results.md`` (the main table, one per curve; the text-to-image and pixel-vs-latent rows
in brief), the quality plots and the comparison and prompt figures."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from ntm.viz import load_png, save_png, titled_row


def write_prompt_figure(path: Path, prompts: tuple[str, ...], samples: dict[str, torch.Tensor],
                        per_prompt: int) -> Path:
    """One row per prompt (the caption above it), each row the rows' samples side by side in the order of
    ``samples``; the first caption also names the column blocks."""
    from ntm.viz import captioned_rows

    names = list(samples)
    rows = []
    for i, prompt in enumerate(prompts):
        images = torch.cat([samples[name][i * per_prompt : (i + 1) * per_prompt] for name in names])
        caption = f"{prompt!r}   columns: {' | '.join(names)}" if i == 0 else repr(prompt)
        rows.append((caption, images))
    upscale = max(1, 64 // next(iter(samples.values())).shape[-1])
    return save_png(captioned_rows(rows, upscale=upscale), path)


def write_comparison(out: Path, panels: tuple[tuple[str, str], ...]) -> Path | None:
    """``out/figures/compare.png`` from the bench's per-row sample figures (None when one is missing)."""
    paths = [out / "figures" / f"samples_{key}.png" for key, _ in panels]
    if not panels or not all(p.is_file() for p in paths):
        return None
    return save_png(titled_row([(title, load_png(p)) for (_, title), p in zip(panels, paths)]),
                    out / "figures" / "compare.png")


CURVE_KEYS = ("finetune_steps", "teacher_steps")
"""Row fields that mark a curve row (and hold its checkpoint's step)."""


def _curve_key(row: dict) -> str | None:
    return next((k for k in CURVE_KEYS if k in row), None)


def results_table(rows: list[dict]) -> str:
    """The main table (one line per model and evaluation point), then one table per curve."""
    main = [r for r in rows if _curve_key(r) is None]
    text = _table(main, ("model", "K", "nfe", "train_steps"))
    for key in CURVE_KEYS:
        for name in dict.fromkeys(r["model"] for r in rows if key in r):
            text += f"\n{name} ({key}):\n\n" + _table([r for r in rows if r["model"] == name], (key, "K", "nfe"))
    return text


def shapes_table(rows: list[dict]) -> str:
    """The text-to-image rows in brief: judge scores (overall seen / unseen and their ratio, then per category on
    the seen split), domain FID, parameters (text encoder excluded) and wall ms per sample."""
    from ntm.eval.shapes_judge import CATEGORIES

    head = ["model", "K", "nfe", "guidance", "seen", "unseen", "unseen/seen", *CATEGORIES, "fid", "params",
            "ms/sample"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        m = r["metrics"]
        cells = [r["model"], str(r["K"]), str(r["nfe"]), f"{r['guidance']:g}",
                 *(_fmt(m.get(k)) for k in ("shapes_seen_overall", "shapes_unseen_overall", "unseen_vs_seen")),
                 *(_fmt(m.get(f"shapes_seen_{c}")) for c in CATEGORIES), _fmt(m.get("fid")),
                 f"{r['params'] / 1e6:.2f} M" if "params" in r else "–", _fmt(r["wall_ms_per_sample"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def latent_table(rows: list[dict]) -> str:
    """Pixel vs latent rows in brief: space, domain FID, judge (seen), wall ms per sample (decoding included),
    training steps, wall and throughput, the cycle PSNR of decoded samples; then the autoencoder's line."""
    head = ["model", "space", "K", "guidance", "fid", "seen", "unseen", "ms/sample", "train steps", "train wall s",
            "train examples/s", "cycle PSNR dB", "params"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        m = r["metrics"]
        cells = [r["model"], r.get("space", "–"), str(r["K"]), f"{r['guidance']:g}", _fmt(m.get("fid")),
                 _fmt(m.get("shapes_seen_overall")), _fmt(m.get("shapes_unseen_overall")),
                 _fmt(r["wall_ms_per_sample"]), str(r["train_steps"]), _fmt(r.get("train_wall_s")),
                 _fmt(r.get("train_examples_per_s")), _fmt(m.get("cycle_psnr_db")),
                 f"{r['params'] / 1e6:.2f} M" if "params" in r else "–"]
        lines.append("| " + " | ".join(cells) + " |")
    for ae in dict((str(r["autoencoder"]), r["autoencoder"]) for r in rows if r.get("autoencoder")).values():
        lines.append(f"\nautoencoder {ae.get('fingerprint')}: latents {ae.get('latent_shape')} "
                     f"({_fmt(ae.get('compression'))}x fewer numbers), held-out reconstruction PSNR "
                     f"{_fmt(ae.get('psnr'))} dB, cycle {_fmt(ae.get('cycle_psnr'))} dB, KL "
                     f"{_fmt(ae.get('kl_per_latent_dim'))} nats/dim, trained in {_fmt(ae.get('wall_seconds'))} s "
                     "(not in the models' wall budget)")
    return "\n".join(lines) + "\n"


def _table(rows: list[dict], columns: tuple[str, ...]) -> str:
    keys = sorted({k for r in rows for k in r["metrics"]})
    head = [*columns, *keys, "ms/sample"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        vals = [str(r[c]) for c in columns]
        vals += [_fmt(r["metrics"].get(k)) for k in keys]
        vals.append(_fmt(r["wall_ms_per_sample"]))
        lines.append("| " + " | ".join(vals) + " |")
    return "\n".join(lines) + "\n"


def _fmt(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def quality_key(rows: list[dict]) -> str:
    for key in ("fid", "energy_distance"):
        if any(key in r["metrics"] for r in rows):
            return key
    return next(iter(rows[0]["metrics"]))


def plot(rows: list[dict], out: Path) -> None:
    """Quality vs NFE and vs wall time, one line per model family; quality along each curve
    (``<quality>_vs_finetune_steps.png``, ``<quality>_vs_teacher_steps.png``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    key = quality_key(rows)
    main = [r for r in rows if _curve_key(r) is None]
    for xkey, fname, xlabel in (("nfe", "quality_vs_nfe.png", "NFE"),
                                ("wall_ms_per_sample", "quality_vs_wall.png", "wall ms per sample")):
        fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
        families: dict[str, list[tuple[float, float]]] = {}
        for r in main:
            if key in r["metrics"]:
                families.setdefault(r["model"], []).append((r[xkey], r["metrics"][key]))
        for family, pts in sorted(families.items()):
            pts.sort()
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=family)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(key)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(out / fname)
        plt.close(fig)
    for ckey in CURVE_KEYS:
        curve = sorted((r[ckey], r["metrics"][key]) for r in rows if ckey in r and key in r["metrics"])
        if not curve:
            continue
        fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
        ax.plot([p[0] for p in curve], [p[1] for p in curve], marker="o",
                label=next(r["model"] for r in rows if ckey in r))
        if ckey == "finetune_steps":  # the references: the teacher's posterior sampler and its ODE at the most steps
            for ref in ("teacher-posterior", "flow-matching-euler"):
                found = [r for r in main if r["model"] == ref and key in r["metrics"]]
                if found:
                    best = max(found, key=lambda r: r["K"])
                    ax.axhline(best["metrics"][key], ls="--", lw=1, color="grey" if ref == "teacher-posterior" else "k",
                               label=f"{ref} @{best['K']}")
        ax.set_xlabel(ckey.replace("_", " "))
        ax.set_ylabel(key)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(out / f"{key}_vs_{ckey}.png")
        plt.close(fig)
