"""Shared benchmark utilities: timing, statistics, memory accounting, machine info."""

from __future__ import annotations

import csv
import datetime
import os
import platform
import socket
import statistics
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import torch

# Large enough to evict the H100/H200 L2 (50-60 MB) between timed reps.
_L2_FLUSH_BYTES = 256 * 1024 * 1024
_flush_buffers: dict[str, torch.Tensor] = {}


@dataclass
class Timing:
    """Summary of one timed job, all times in milliseconds."""

    median: float
    p20: float
    p80: float
    min: float
    reps: int


def summarize(times_ms: list[float]) -> Timing:
    """Median, 20th/80th percentile and minimum of a list of times (ms)."""
    if len(times_ms) == 1:
        t = times_ms[0]
        return Timing(t, t, t, t, 1)
    deciles = statistics.quantiles(times_ms, n=10, method="inclusive")
    return Timing(
        median=statistics.median(times_ms),
        p20=deciles[1],
        p80=deciles[7],
        min=min(times_ms),
        reps=len(times_ms),
    )


def synchronize(device: str) -> None:
    """Wait for all queued work on ``device``."""
    if device == "cuda":
        torch.cuda.synchronize()


def flush_cache(device: str) -> None:
    """Evict the GPU L2 so every rep reads its inputs from HBM.

    On CPU this is a no-op: the machine this harness was written on has a
    480 MB (virtualised) L3, so flushing would cost more than the ops; the
    markdown header records the cache size instead.
    """
    if device != "cuda":
        return
    buf = _flush_buffers.get(device)
    if buf is None:
        buf = torch.empty(_L2_FLUSH_BYTES, dtype=torch.uint8, device=device)
        _flush_buffers[device] = buf
    buf.zero_()


def time_job(
    prepare: Callable[[], Callable[[], Any]],
    *,
    device: str,
    reps: int,
    warmup: int,
) -> tuple[list[float], float]:
    """Time ``prepare()()`` ``reps`` times after ``warmup`` untimed runs.

    ``prepare`` runs outside the timed region and returns the zero-argument
    callable that is timed (so per-rep state such as a refilled in-place
    buffer or a forward graph to differentiate is built untimed). Whatever the
    timed callable returns is released after the clock stops.

    Returns the per-rep times in ms and the wall time of the first call in
    seconds (includes torch.compile's compilation for compiled providers).
    """
    run = prepare()
    synchronize(device)
    t0 = time.perf_counter()
    result = run()
    synchronize(device)
    first_call_s = time.perf_counter() - t0
    del result, run
    # The first call above counts as one warm-up rep.
    for _ in range(max(warmup - 1, 0)):
        run = prepare()
        result = run()
        del result, run
    synchronize(device)

    times: list[float] = []
    if device == "cuda":
        for _ in range(reps):
            run = prepare()
            flush_cache(device)
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            result = run()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
            del result, run
    else:
        for _ in range(reps):
            run = prepare()
            t0 = time.perf_counter()
            result = run()
            t1 = time.perf_counter()
            times.append((t1 - t0) * 1e3)
            del result, run
    return times, first_call_s


def _unique_storages(tensors: Iterable[torch.Tensor]) -> tuple[int, dict[int, int]]:
    """Total bytes of the distinct storages behind ``tensors``, and {data_ptr: nbytes}."""
    seen: dict[int, int] = {}
    for t in tensors:
        if isinstance(t, torch.Tensor):
            storage = t.untyped_storage()
            seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values()), seen


def flatten_tensors(obj: Any) -> list[torch.Tensor]:
    """All tensors in a (possibly nested) tuple/list result."""
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, (tuple, list)):
        return [t for o in obj for t in flatten_tensors(o)]
    return []


@dataclass
class MemoryAccount:
    """Bytes an op keeps alive for backward, and the bytes of its outputs."""

    saved_bytes: int  # unique storages packed by autograd (inputs and outputs included)
    saved_extra_bytes: int  # same, excluding storages owned by the inputs or the outputs
    output_bytes: int


def saved_for_backward(fn: Callable[[], Any], inputs: Iterable[torch.Tensor]) -> MemoryAccount | None:
    """Run ``fn`` once and account for what autograd saves for backward.

    Uses ``saved_tensors_hooks`` so it works for eager ops, C++ autograd
    functions and AOTAutograd graphs alike. ``saved_extra_bytes`` is the memory
    kept alive only because backward needs it (inputs and outputs are alive
    anyway). Returns None if the provider refuses to run under the hooks.
    """
    packed: list[torch.Tensor] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        packed.append(t)
        return t

    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = fn()
    except Exception:  # noqa: BLE001 - report "n/a" rather than abort the run
        return None
    saved_total, saved = _unique_storages(packed)
    output_bytes, outputs = _unique_storages(flatten_tensors(out))
    _, owned = _unique_storages(inputs)
    owned.update(outputs)
    extra = sum(nbytes for ptr, nbytes in saved.items() if ptr not in owned)
    del out, packed
    return MemoryAccount(saved_total, extra, output_bytes)


def cuda_peak_bytes(prepare: Callable[[], Callable[[], Any]]) -> int | None:
    """Peak CUDA memory allocated by one timed call, above what was live before it."""
    if not torch.cuda.is_available():
        return None
    run = prepare()
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    result = run()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    del result, run
    return peak


def cpu_model() -> str:
    """CPU model name from /proc/cpuinfo (falls back to platform.processor())."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_cache() -> str:
    """Last-level cache size as reported by sysfs, or '' if unknown."""
    best = ""
    base = "/sys/devices/system/cpu/cpu0/cache"
    try:
        for idx in sorted(os.listdir(base)):
            try:
                with open(os.path.join(base, idx, "level")) as f:
                    level = f.read().strip()
                with open(os.path.join(base, idx, "size")) as f:
                    size = f.read().strip()
            except OSError:
                continue
            best = f"L{level} {size}"
    except OSError:
        pass
    return best


def machine_info(device: str, build_info: dict | None) -> dict[str, str]:
    """Flat dict of machine/build facts recorded with every result row."""
    info = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "hostname": socket.gethostname(),
        "cpu_model": cpu_model(),
        "cpu_llc": cpu_cache(),
        "device_name": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "torch": torch.__version__,
        "threads": str(torch.get_num_threads()),
        # Changes CPU allocation behaviour (2 MB-aligned, madvise'd huge pages)
        # and with it every fresh-output CPU figure.
        "THP_MEM_ALLOC_ENABLE": os.environ.get("THP_MEM_ALLOC_ENABLE", "<unset>"),
    }
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            info["thp_sysfs"] = f.read().strip()
    except OSError:
        info["thp_sysfs"] = "unknown"
    for key, value in (build_info or {}).items():
        info[f"sdu_ext_{key}"] = str(value)
    info["git"] = _git_revision()
    try:
        import sdu_ext._C as ext

        # The extension may be rebuilt between runs of the same commit.
        info["sdu_ext_C_mtime"] = datetime.datetime.fromtimestamp(os.path.getmtime(ext.__file__)).isoformat(
            timespec="seconds")
    except (ImportError, OSError):
        pass
    return info


def _git_revision() -> str:
    """Short commit of the repository holding this file, '+dirty' if it has local changes."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        rev = subprocess.run(["git", "-C", root, "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", root, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return rev + ("+dirty" if dirty else "")


README = Path(__file__).resolve().parent.parent / "README.md"


def update_readme_section(key: str, body: str, path: Path = README) -> None:
    """Replace the README text between ``<!-- benchmarks:KEY:start -->`` and its end marker."""
    start, end = f"<!-- benchmarks:{key}:start -->", f"<!-- benchmarks:{key}:end -->"
    text = path.read_text()
    if start not in text or end not in text:
        raise SystemExit(f"--readme: {path} has no {start} ... {end} markers")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    path.write_text(f"{head}{start}\n{body}\n{end}{tail}")


def write_rows(rows: list[dict[str, Any]], path: Path) -> None:
    """``rows`` (dicts with the keys of the first) as a CSV file at ``path`` (folders made)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def read_rows(path: Path) -> list[dict[str, str]]:
    """The rows of a CSV file written by :func:`write_rows` (values as strings)."""
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def sparse_coding(n: int, m: int, sizes: Iterable[int], device: str, seed: int = 0):
    """A unit-column dictionary D (n, m) on the CPU and, per entry of ``sizes``, a pair
    ``(x (k, n), y* (k, m))`` on ``device`` of 10%-sparse Gaussian codes y* and x = D y*,
    drawn in that order from one generator seeded by ``seed``."""
    g = torch.Generator().manual_seed(seed)
    D = torch.nn.functional.normalize(torch.randn(n, m, generator=g), dim=0)
    pairs = []
    for k in sizes:
        codes = torch.randn(k, m, generator=g) * (torch.rand(k, m, generator=g) < 0.1)
        pairs.append(((codes @ D.T).to(device), codes.to(device)))
    return D, pairs
