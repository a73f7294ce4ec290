"""``ntm bench checkpoint``: bytes each rank writes and host memory each rank adds while saving a training checkpoint.

    ntm bench checkpoint --out runs/bench-checkpoint                   # 25 M parameters, 2 gloo ranks on the CPU
    ntm bench checkpoint --out runs/bc --params-m 100 --ranks 4

``torchrun --nproc-per-node RANKS`` starts gloo workers on the CPU (``python -m ntm.experiments.bench.checkpoint``).
Each builds the training state the loop checkpoints: ``toy-ntm`` with the transporter's and the predictor's width
chosen for about ``--params-m`` million parameters (a multiple of ``lcm(4, RANKS)``, so that the weights shard
evenly), wrapped with FSDP2 (:func:`ntm.train.distributed.wrap`), its AdamW and schedule
(:func:`ntm.train.step.build_train_state`, as the loop builds them) after one :func:`~ntm.train.step.train_step`. Then it saves that state once per mode, as the loop's
``save`` does:

- ``sync``: :class:`ntm.train.checkpoint.dcp.ShardedCheckpointer` with :func:`~ntm.train.checkpoint.dcp.training_state`
  (``train.checkpoint_format dcp``);
- ``async``: the same with ``async_save`` (``train.async_checkpoint``), timed until the save is written and
  committed (:meth:`~ntm.train.checkpoint.dcp.ShardedCheckpointer.wait`);
- ``file``: the full state gathered on rank 0 and written by :meth:`ntm.train.checkpoint.CheckpointManager.save`
  (``train.checkpoint_format file``).

During each save a thread samples the process's resident memory every 2 ms (psutil when installed, else
``/proc/self/statm``); where Linux lets a process reset its high-water mark (``/proc/self/clear_refs``), the
kernel's ``VmHWM`` is read as well and the larger peak counts. The freed heap is returned to the system
(``malloc_trim``) before each save's baseline. Per rank it reports its shard (the bytes of the tensors and blobs
of the state it holds: its shards of the sharded entries, the replicated ones whole), the bytes it wrote (its
``__<rank>_0.distcp`` file; for ``file`` the one file, rank 0's), that over ``total / RANKS`` (1.0: an even
split), and the peak memory above the baseline, in MiB and as a multiple of its shard.

**Loads** is checked in this process after the workers exit: :func:`ntm.train.checkpoint.load_checkpoint` reads
each checkpoint (every key the loop requires), and every tensor of ``model``, ``optimizer`` and ``ema`` must have
the element count, sum and absolute sum (float64) the workers' state had. Outputs: ``DIR/checkpoint.json``,
``DIR/checkpoint.md``, the workers' log ``DIR/torchrun.log`` and records ``DIR/ranks/rank<r>.json``; the
checkpoints (``DIR/checkpoints/<mode>``) are deleted afterwards unless ``--keep-checkpoints``.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import datetime
import gc
import json
import math
import os
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any


from ntm.experiments.launch import run_ranks

MODES = ("sync", "async", "file")
"""The saves measured, in order: DCP synchronous, DCP asynchronous, one file gathered on rank 0."""
HEADS = 4
"""Attention heads of the benchmark model (its width is a multiple of them)."""
SAMPLE_S = 0.002
"""Interval of the memory sampler."""
STEP = 1
"""The step the checkpoints are saved as."""
MiB = 2**20
class WorkerError(RuntimeError):
    """The torchrun workers failed or hung (not a user error: the message holds the end of their log)."""


@dataclasses.dataclass(frozen=True)
class CheckpointBenchArgs:
    """Bytes written and host memory added per rank while saving a training checkpoint (DCP sync, DCP async, one
    file): torchrun, gloo ranks on the CPU (see experiments/bench/checkpoint.py)."""

    out: Path = Path("runs/bench-checkpoint")
    """Output directory (checkpoint.json, checkpoint.md, torchrun.log)."""
    params_m: float = 25.0
    """Parameters of the model, in millions (about: the width is rounded)."""
    ranks: int = 2
    """Ranks (torchrun --nproc-per-node), each a gloo process on the CPU."""
    keep_checkpoints: bool = False
    """Keep the saved checkpoints under OUT/checkpoints (deleted by default: 16 bytes per parameter per mode)."""
    seed: int = 0
    """Seed of the model's weights."""


# -- the model ------------------------------------------------------------------
def bench_experiment(width: int):
    """``toy-ntm`` with transporter and predictor of ``width`` (4 heads), trained on the CPU with FSDP."""
    from ntm.experiments.presets import PRESETS

    exp = PRESETS["toy-ntm"]
    model = exp.model.replace(transporter=exp.model.transporter.replace(width=width, num_heads=HEADS),
                              predictor=exp.model.predictor.replace(width=width, num_heads=HEADS))
    train = exp.train.replace(device="cpu", parallel="fsdp", sample_every=0)
    return exp.replace(name="bench-checkpoint", model=model, train=train)


def width_for(params: float, ranks: int) -> tuple[int, int]:
    """The width (a multiple of ``lcm(4, ranks)``) whose model has the parameter count closest to ``params``, and
    that count."""
    from ntm.experiments.bench.scaling import count, meta_model

    unit = math.lcm(HEADS, ranks)

    def size(w: int) -> int:
        return count(meta_model(bench_experiment(w)))

    guess = 8.0 * unit
    for _ in range(3):  # the count grows about as the width squared
        guess *= math.sqrt(params / size(max(unit, unit * round(guess / unit))))
    widths = {max(unit, unit * (round(guess / unit) + d)) for d in (-1, 0, 1)}
    return min(((w, size(w)) for w in widths), key=lambda wc: (abs(wc[1] - params), wc[0]))


# -- measuring ------------------------------------------------------------------
def _rss_reader() -> tuple[Callable[[], int], str]:
    """A function giving this process's resident bytes, and its source."""
    try:
        import psutil
    except ImportError:
        page = os.sysconf("SC_PAGE_SIZE")

        def statm() -> int:
            with open("/proc/self/statm", "rb") as f:
                return int(f.read().split()[1]) * page

        return statm, "/proc/self/statm"
    process = psutil.Process()
    return (lambda: process.memory_info().rss), "psutil"


def _reset_high_water() -> bool:
    """Reset the kernel's peak resident size of this process (``VmHWM``); whether it could."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _high_water() -> int | None:
    """``VmHWM`` in bytes, where the kernel reports it."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _trim() -> None:
    """Collect garbage and hand the freed heap back to the system (glibc), so that a baseline is not padded."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


@contextlib.contextmanager
def peak_rss(interval: float = SAMPLE_S) -> Iterator[dict[str, Any]]:
    """Measure the body's peak resident memory above the baseline at entry; fills the yielded dict on exit
    (``baseline``, ``peak``, ``extra`` in bytes, ``samples``, ``source``)."""
    read, source = _rss_reader()
    _trim()
    out: dict[str, Any] = {"source": source}
    baseline = read()
    peaks = [baseline]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(interval):
            peaks.append(read())

    hwm = _reset_high_water()
    thread = threading.Thread(target=sample, name="peak-rss", daemon=True)
    thread.start()
    try:
        yield out
    finally:
        stop.set()
        thread.join()
        peaks.append(read())
        sampled = max(peaks)
        kernel = _high_water() if hwm else None
        peak = max(sampled, kernel or 0)
        out.update(baseline=baseline, peak=peak, extra=peak - baseline, sampled_peak=sampled, vmhwm=kernel,
                   samples=len(peaks))


def local_bytes(obj: Any) -> int:
    """Bytes of the tensors and blobs of a state held by this rank: a DTensor's local shard, other tensors whole."""
    import torch
    from torch.distributed.tensor import DTensor

    if isinstance(obj, DTensor):
        local = obj.to_local()
        return local.numel() * local.element_size()
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, (bytes, bytearray)):
        return len(obj)
    if isinstance(obj, Mapping):
        return sum(local_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(local_bytes(v) for v in obj)
    return 0


CHECKED_PARTS = ("model", "optimizer", "ema")


def _leaves(obj: Any, prefix: str, out: dict[str, Any]) -> dict[str, Any]:
    """The tensors of a nested state under dotted keys (list items by index)."""
    import torch

    if isinstance(obj, torch.Tensor):
        out[prefix] = obj
    elif isinstance(obj, Mapping):
        for k, v in obj.items():
            _leaves(v, f"{prefix}.{k}", out)
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _leaves(v, f"{prefix}.{i}", out)
    return out


def _tensors(state: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for part in CHECKED_PARTS:
        _leaves(state.get(part, {}), part, out)
    return out


def state_checksums(state: Mapping[str, Any], rank: int, distributed: bool) -> dict[str, list[float]]:
    """``{key: [numel, sum, abs sum]}`` (float64) of every tensor of ``state``'s model, optimizer and EMA, over the
    whole tensors (collective when ``distributed``: the shards are summed over ranks, replicated tensors counted
    once)."""
    import torch
    import torch.distributed as dist
    from torch.distributed.tensor import DTensor

    tensors = _tensors(state)
    sums = torch.zeros(len(tensors), 2, dtype=torch.float64)
    for i, t in enumerate(tensors.values()):
        local = t.to_local() if isinstance(t, DTensor) else (t if rank == 0 else None)
        if local is not None and local.numel():
            x = local.detach().to(torch.float64)
            sums[i, 0], sums[i, 1] = x.sum(), x.abs().sum()
    if distributed:
        dist.all_reduce(sums)
    return {k: [float(t.numel()), *sums[i].tolist()] for i, (k, t) in enumerate(tensors.items())}


def check_loads(path: Path, expected: Mapping[str, list[float]]) -> str | None:
    """``None`` when checkpoint ``path`` loads in this process with every key the loop requires and the tensors
    ``expected`` (:func:`state_checksums`) describes; else the first problem, one line."""
    from ntm.train.checkpoint import load_checkpoint
    from ntm.train.errors import CheckpointError
    from ntm.train.loop import CHECKPOINT_KEYS

    try:
        state = load_checkpoint(path, required=CHECKPOINT_KEYS)
    except CheckpointError as e:
        return str(e)
    got = state_checksums(state, 0, distributed=False)
    if set(got) != set(expected):
        missing, extra = sorted(set(expected) - set(got)), sorted(set(got) - set(expected))
        return f"{path}: tensors differ ({'missing ' + missing[0] if missing else 'unexpected ' + extra[0]})"
    for key, (n, total, size) in expected.items():
        m, t, s = got[key]
        tol = 1e-9 * max(size, s, 1.0)
        if m != n or abs(t - total) > tol or abs(s - size) > tol:
            return (f"{path}: {key} differs from the saved state ({m:.0f} elements, sum {t:.9g}; saved {n:.0f}, "
                    f"{total:.9g})")
    return None


# -- the worker (one per rank, under torchrun) ---------------------------------------
def worker(out: Path, width: int, seed: int) -> None:
    """Build the training state, save it once per mode measuring each save, write ``out/ranks/rank<r>.json``."""
    import torch

    from ntm.experiments.build import data_for, train_job
    from ntm.train import distributed as D
    from ntm.train.checkpoint import CheckpointManager, rng_state
    from ntm.train.checkpoint.dcp import ShardedCheckpointer, training_state
    from ntm.train.ema_models import full_ema_state
    from ntm.train.loop import FORMAT
    from ntm.train.step import build_train_state, train_step

    exp = bench_experiment(width)
    exp = exp.replace(train=exp.train.replace(seed=seed))
    cfg = exp.train
    ctx = D.init(cfg.device)
    (out / "ranks").mkdir(parents=True, exist_ok=True)
    with open(out / "ranks" / "pids", "a") as f:
        f.write(f"{os.getpid()}\n")
    job = train_job(exp, data_for(exp))
    # the loop's state after its first step: AdamW's moments and step counts, the schedule and the EMA
    state = build_train_state(cfg, job.build_model, objective=job.objective, conditioner=job.conditioner,
                              layout=job.layout, num_classes=job.data.spec.num_classes, ctx=ctx)
    model, inner, optimizer, scheduler, ema = state.model, state.inner, state.optimizer, state.scheduler, state.ema
    params = sum(p.numel() for p in inner.parameters())  # a DTensor counts its global elements
    batch = next(iter(job.data.train_batches(cfg.batch_size // ctx.world_size, seed=cfg.seed, rank=ctx.rank,
                                             world_size=ctx.world_size)))
    train_step(state, batch)

    meta = {"parallel": cfg.parallel, "config": job.config}
    state = training_state(inner, optimizer, scheduler, ema, ctx.rank, ctx.world_size, STEP)
    shard = local_bytes(state)
    checksums = state_checksums(state, ctx.rank, ctx.distributed)
    del state

    def save_file(manager: CheckpointManager) -> None:  # the loop's save() with train.checkpoint_format file
        full = {"format": FORMAT, "step": STEP, "model": D.full_state_dict(model), "ema": full_ema_state(ema),
                "optimizer": D.optimizer_state(model, optimizer), "scheduler": scheduler.state_dict(),
                "rng": rng_state(), "config": job.config}
        if ctx.is_main:
            manager.save(STEP, full)
        del full
        ctx.barrier()

    results: dict[str, Any] = {}
    for mode in MODES:
        manager = CheckpointManager(out / "checkpoints" / mode, keep=None, format="file" if mode == "file" else "dcp")
        sharded = None if mode == "file" else ShardedCheckpointer(manager, ctx.rank, ctx.world_size,
                                                                  async_save=mode == "async", meta=meta)
        ctx.barrier()
        with peak_rss() as memory:
            started = time.perf_counter()
            if sharded is None:
                save_file(manager)
                blocking = time.perf_counter() - started
            else:  # the loop's save(): the state built at the step, then saved (async: in the background)
                sharded.save(STEP, training_state(inner, optimizer, scheduler, ema, ctx.rank, ctx.world_size, STEP))
                blocking = time.perf_counter() - started
                sharded.wait()
            written = time.perf_counter() - started
        ctx.barrier()
        results[mode] = {"memory": memory, "blocking_s": blocking, "written_s": written}
    record = {"rank": ctx.rank, "world_size": ctx.world_size, "shard_bytes": shard, "modes": results}
    if ctx.is_main:
        record.update(params=params, width=width, checksums=checksums, threads=torch.get_num_threads(),
                      torch=torch.__version__)
    (out / "ranks" / f"rank{ctx.rank}.json").write_text(json.dumps(record, indent=1) + "\n")
    D.shutdown(ctx)


# -- the command ------------------------------------------------------------------
def launch(out: Path, ranks: int, width: int, seed: int, timeout_s: float) -> tuple[int, str]:
    """``torchrun --nproc-per-node ranks`` of :func:`worker` (gloo, CPU; :func:`run_ranks`); output to
    ``out/torchrun.log``. Returns the exit status (``-1`` when it ran past ``timeout_s`` and was stopped) and the
    log."""
    code, text = run_ranks(["-m", "ntm.experiments.bench.checkpoint", "worker", str(out), str(width), str(seed)],
                           out / "torchrun.log", ranks=ranks, timeout_s=timeout_s, pid_file=out / "ranks" / "pids")
    return -1 if code is None else code, text


def run_checkpoint_bench(a: CheckpointBenchArgs) -> dict:
    """The whole bench (see the module docstring); writes ``checkpoint.json`` and ``checkpoint.md`` under
    ``a.out``."""
    from ntm.experiments.core import UsageError
    from ntm.train.checkpoint import CheckpointManager
    from ntm.train.checkpoint.dcp import bytes_per_rank

    if not (a.params_m > 0 and math.isfinite(a.params_m)):
        raise UsageError(f"--params-m must be > 0, got {a.params_m}")
    if a.ranks < 1:
        raise UsageError(f"--ranks must be >= 1, got {a.ranks}")
    width, params = width_for(a.params_m * 1e6, a.ranks)
    a.out.mkdir(parents=True, exist_ok=True)
    for stale in (a.out / "checkpoints", a.out / "ranks"):
        shutil.rmtree(stale, ignore_errors=True)
    (a.out / "ranks").mkdir()
    print(f"bench checkpoint: toy-ntm at width {width} ({params / 1e6:.1f} M parameters), "
          f"{_ranks({'ranks': a.ranks, 'backend': 'gloo'})} on the CPU; log: {a.out / 'torchrun.log'}", flush=True)
    timeout = 300 + 20 * a.ranks + 20 * params / 1e6
    started = time.monotonic()
    code, log = launch(a.out, a.ranks, width, a.seed, timeout)
    if code != 0:
        tail = "\n".join(log.strip().splitlines()[-25:])
        why = f"ran past {timeout:.0f} s and was stopped" if code == -1 else f"exited with status {code}"
        raise WorkerError(f"the workers {why} (log: {a.out / 'torchrun.log'}):\n{tail}")
    records = [json.loads((a.out / "ranks" / f"rank{r}.json").read_text()) for r in range(a.ranks)]
    main = records[0]
    modes = []
    for mode in MODES:
        path = CheckpointManager(a.out / "checkpoints" / mode).latest_path()
        if path is None:
            raise WorkerError(f"the {mode} save left no checkpoint under {a.out / 'checkpoints' / mode}")
        if path.is_dir():
            written = bytes_per_rank(path)
            extra = sum(f.stat().st_size for f in path.iterdir() if not f.name.endswith(".distcp"))
        else:
            written, extra = {0: path.stat().st_size}, 0
        total = sum(written.values())
        problem = check_loads(path, main["checksums"])
        rows = []
        for rec in records:
            r = rec["rank"]
            m = rec["modes"][mode]
            mine = written.get(r, 0)
            rows.append({"rank": r, "shard_bytes": rec["shard_bytes"], "bytes_written": mine,
                         "written_share": mine / (total / a.ranks) if total else math.nan,
                         "peak_extra_bytes": m["memory"]["extra"], "peak_extra_mib": m["memory"]["extra"] / MiB,
                         "peak_extra_x_shard": m["memory"]["extra"] / rec["shard_bytes"],
                         "blocking_s": m["blocking_s"], "written_s": m["written_s"], "memory": m["memory"]})
        modes.append({"mode": mode, "format": "file" if mode == "file" else "dcp", "async": mode == "async",
                      "path": str(path), "bytes_written": total, "index_bytes": extra, "loads": problem is None,
                      "load_error": problem, "ranks": rows})
    if not a.keep_checkpoints:
        shutil.rmtree(a.out / "checkpoints", ignore_errors=True)
    result = {"date": datetime.date.today().isoformat(), "model": "toy-ntm", "width": width, "params": main["params"],
              "ranks": a.ranks, "backend": "gloo", "device": "cpu", "cpu_count": _cpus(), "threads": main["threads"],
              "torch": main["torch"], "memory_source": main["modes"]["sync"]["memory"]["source"],
              "vmhwm": main["modes"]["sync"]["memory"]["vmhwm"] is not None,
              "state_bytes": sum(rec["shard_bytes"] for rec in records), "wall_s": time.monotonic() - started,
              "kept_checkpoints": a.keep_checkpoints, "modes": modes}
    (a.out / "checkpoint.json").write_text(json.dumps(result, indent=2) + "\n")
    (a.out / "checkpoint.md").write_text(checkpoint_table(result))
    return result


def _cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _ranks(result: dict) -> str:
    n = result["ranks"]
    return f"{n} {result['backend']} ranks" if n > 1 else "1 process (no process group)"


def checkpoint_table(result: dict) -> str:
    """The markdown table of :func:`run_checkpoint_bench`'s result: one row per mode and rank."""
    head = (f"Checkpoint save: toy-ntm at width {result['width']} ({result['params'] / 1e6:.1f} M parameters; model, "
            f"AdamW and EMA: {result['state_bytes'] / MiB:.0f} MiB), "
            f"{_ranks(result)} on the CPU, {result['cpu_count']} CPU cores, "
            f"{result['date']}. Written / (total/N): a rank's bytes over an even split of the checkpoint's; peak "
            f"extra: resident memory above the rank's own before the save ({result['memory_source']}"
            f"{' and VmHWM' if result['vmhwm'] else ''}).\n\n"
            "| mode | rank | shard (MiB) | written (MiB) | written / (total/N) | peak extra (MiB) | peak extra / shard "
            "| blocks (s) | until written (s) | loads |\n|---|---|---|---|---|---|---|---|---|---|\n")
    rows = []
    for m in result["modes"]:
        name = {"sync": "dcp", "async": "dcp async", "file": "file"}[m["mode"]]
        for r in m["ranks"]:
            rows.append(f"| {name} | {r['rank']} | {r['shard_bytes'] / MiB:.1f} | {r['bytes_written'] / MiB:.1f} "
                        f"| {r['written_share']:.3f} | {r['peak_extra_mib']:.1f} | {r['peak_extra_x_shard']:.2f} "
                        f"| {r['blocking_s']:.2f} | {r['written_s']:.2f} | {'yes' if m['loads'] else 'no'} |\n")
    return head + "".join(rows)


def run_command(a: CheckpointBenchArgs) -> int:
    """``ntm bench checkpoint``: run the bench, print its table; 1 when the workers fail or a checkpoint does not
    load."""
    try:
        result = run_checkpoint_bench(a)
    except WorkerError as e:
        print(f"ntm bench checkpoint: error: {e}", file=sys.stderr)
        return 1
    print(checkpoint_table(result), end="")
    failed = [m for m in result["modes"] if not m["loads"]]
    for m in failed:
        print(f"ntm bench checkpoint: the {m['mode']} checkpoint does not load: {m['load_error']}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__" and sys.argv[1:2] == ["worker"]:  # under torchrun: worker OUT WIDTH SEED
    worker(Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
