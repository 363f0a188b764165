"""Side-by-side benchmark of sdu_ext's fused ops against eager and torch.compile.

Providers
    sdu_ext       the fused C++/CUDA op (``sdu_ext.ops``)
    eager         the pure-PyTorch composition (``sdu_ext.reference``)
    compile       ``torch.compile(reference.<op>)``
    matmul_only   lista_layer case only: the two forward GEMMs (addmm) and, through
                  autograd, the four backward GEMMs, with no thresholding: the floor
                  a fused lista layer is measured against
    copy_fresh    ``torch.empty_like(x).copy_(x)``: copy into a new allocation
    copy_prealloc ``buf.copy_(x)``: copy into a resident buffer

Modes
    forward   the op with grad-requiring inputs (a training forward: it records
              what backward needs)
    backward  ``torch.autograd.grad`` through a graph built untimed before each rep
    full      forward + backward

Usage
    python benchmarks/ops.py [--device cpu|cuda] [--reps N] [--quick] [--out DIR]
    python benchmarks/ops.py --summary [--device cpu|cuda] [--out DIR]   # targets from the CSV

Writes ``ops_<device>.csv`` (one row per case/variant/provider/mode, machine info in
every row) and ``ops_<device>.md`` (tables, ratios, target check) under ``--out``.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    MemoryAccount,
    cuda_peak_bytes,
    flatten_tensors,
    machine_info,
    saved_for_backward,
    summarize,
    time_job,
    update_readme_section,
)

MODES = ("forward", "backward", "full")
MB = 1024.0 * 1024.0

ST_SHAPE = (4096, 4096)
DC_SHAPE = (11, 512, 1228)  # (L+1, B, m)
DC_EPS = 0.05
DC_FORMS = ("mean_ratio", "ratio_of_means")
LISTA_SHAPE = (512, 1228, 1024)  # (B, m, n)


# Minimal bytes each op must move through memory, float32 throughout; reductions
# into scalars / (L,) vectors are negligible and not counted.
#   soft_threshold, N elements:
#     forward  read x, write out                               8N
#     backward read grad_out, read x (or out), write grad_x    12N (grad_theta fused)
#     full     forward + backward                              20N
#     (an int8 sign mask instead of x would make backward 9N; the model assumes
#      a float32 tensor is what backward reads, as every provider here does)
#   soft_threshold_ (in place): same as soft_threshold.
#   descent_constraints, P = (L+1)*B*m iterate elements, R = B*m reference elements:
#     forward  read iterates and reference                      4(P + R)
#     backward read both again, write grad_iterates             4(2P + R)
#     full                                                      4(3P + 2R)
#   lista_layer, y (B, m), xs (B, n), W1 (m, m), W2 (m, n), out (B, m) (SPEC section 2):
#     GEMM-bound, so GFLOP/s is the figure of merit; bytes:
#     forward  read y, xs, W1, W2, write out                    4(2Bm + Bn + m^2 + mn)
#     backward read grad, saved out (or pre-activation), y, xs, W1, W2;
#              write grad_y, grad_xs, grad_W1, grad_W2          4(2Bm + 2(Bm + Bn + m^2 + mn))
#   FLOPs (lista_layer and matmul_only): forward 2Bm(m+n), backward 4Bm(m+n).
def _st_bytes(n: int) -> dict[str, int]:
    return {"forward": 8 * n, "backward": 12 * n, "full": 20 * n}


def _dc_bytes(p: int, r: int) -> dict[str, int]:
    return {"forward": 4 * (p + r), "backward": 4 * (2 * p + r), "full": 4 * (3 * p + 2 * r)}


def _lista_bytes(b: int, m: int, n: int) -> dict[str, int]:
    inputs = b * m + b * n + m * m + m * n
    fwd = 4 * (inputs + b * m)
    bwd = 4 * (2 * b * m + 2 * inputs)
    return {"forward": fwd, "backward": bwd, "full": fwd + bwd}


def _lista_flops(b: int, m: int, n: int) -> dict[str, int]:
    fwd = 2 * b * m * (m + n)
    return {"forward": fwd, "backward": 2 * fwd, "full": 3 * fwd}


@dataclass
class Bench:
    """One provider of one case.

    ``fn(*inputs)`` computes the op; ``grad_inputs`` are the tensors
    differentiated in backward/full; ``select`` picks the outputs to
    differentiate from ``fn``'s result. For in-place benches ``fresh`` builds,
    untimed, the argument list for one rep (see ``_inplace_args``).
    """

    case: str
    op: str
    variant: str
    provider: str
    fn: Callable[..., Any]
    inputs: list[Any]
    grad_inputs: list[torch.Tensor] = field(default_factory=list)
    select: Callable[[Any], list[torch.Tensor]] = flatten_tensors
    fresh: Callable[[], list[Any]] | None = None
    modes: tuple[str, ...] = MODES
    bytes_model: dict[str, int] = field(default_factory=dict)
    flops: dict[str, int] = field(default_factory=dict)


def _inplace_args(x: torch.Tensor, theta: torch.Tensor) -> Callable[[], list[Any]]:
    """Per-rep arguments for an in-place op, built outside the timed region.

    The buffer is ``x.clone()``: autograd-tracked, so gradients reach ``x`` and
    ``theta`` as in the out-of-place rows (CloneBackward just passes the
    gradient through), and resident (already written) when the timed in-place
    op runs. The timed region therefore sees no allocation for the output.
    """

    def make() -> list[Any]:
        return [x.clone(), theta]

    return make


def build_benches(device: str, ops: set[str]) -> list[Bench]:
    """All benches for the selected ops on ``device``."""
    from sdu_ext import ops as sdu_ops
    from sdu_ext import reference

    gen = torch.Generator(device="cpu").manual_seed(0)

    def randn(*shape: int, scale: float = 1.0) -> torch.Tensor:
        return (torch.randn(*shape, generator=gen) * scale).to(device)

    benches: list[Bench] = []

    if "soft_threshold" in ops:
        case = f"soft_threshold {ST_SHAPE[0]}x{ST_SHAPE[1]}"
        x = randn(*ST_SHAPE).requires_grad_()
        theta = torch.tensor(0.5, device=device, requires_grad=True)
        bm = _st_bytes(x.numel())
        for provider, fn in (
            ("sdu_ext", sdu_ops.soft_threshold),
            ("eager", reference.soft_threshold),
            ("compile", torch.compile(reference.soft_threshold)),
        ):
            benches.append(Bench(case, "soft_threshold", "out_of_place", provider, fn, [x, theta],
                                 grad_inputs=[x, theta], bytes_model=bm))
        # torch.vmap over the rows runs the op's batching rule: it must cost what the
        # stacked call costs.
        benches.append(Bench(case, "soft_threshold", "vmap", "sdu_ext",
                             torch.vmap(sdu_ops.soft_threshold, in_dims=(0, None)), [x, theta],
                             grad_inputs=[x, theta], bytes_model=bm))
        benches.append(Bench(case, "soft_threshold_", "inplace", "sdu_ext", sdu_ops.soft_threshold_,
                             [x, theta], grad_inputs=[x, theta], fresh=_inplace_args(x, theta),
                             bytes_model=bm))
        if hasattr(reference, "soft_threshold_"):
            benches.append(Bench(case, "soft_threshold_", "inplace", "eager", reference.soft_threshold_,
                                 [x, theta], grad_inputs=[x, theta], fresh=_inplace_args(x, theta),
                                 bytes_model=bm))
        benches.extend(_copy_benches(case, x))

    if "descent_constraints" in ops:
        iterates = randn(*DC_SHAPE).requires_grad_()
        ref = randn(*DC_SHAPE[1:])
        bm = _dc_bytes(iterates.numel(), ref.numel())
        compiled_dc = torch.compile(reference.descent_constraints)
        for form in DC_FORMS:
            case = f"descent_constraints {form} {DC_SHAPE[0]}x{DC_SHAPE[1]}x{DC_SHAPE[2]}"
            for provider, fn in (
                ("sdu_ext", sdu_ops.descent_constraints),
                ("eager", reference.descent_constraints),
                ("compile", compiled_dc),
            ):
                # Only the constraint values are differentiated (per_sample is
                # for logging), as in a Lagrangian training loss.
                benches.append(Bench(case, "descent_constraints", form, provider, fn,
                                     [iterates, ref, DC_EPS, form], grad_inputs=[iterates],
                                     select=lambda out: [out[0]], bytes_model=bm))
            benches.extend(_copy_benches(case, iterates))

    if "lista_layer" in ops:
        b, m, n = LISTA_SHAPE
        case = f"lista_layer B={b} m={m} n={n}"
        # Shapes as in SPEC section 2: code y (B, m), signal xs (B, n), per-coordinate theta.
        y = randn(b, m).requires_grad_()
        xs = randn(b, n).requires_grad_()
        w1 = randn(m, m, scale=m ** -0.5).requires_grad_()
        w2 = randn(m, n, scale=n ** -0.5).requires_grad_()
        theta = torch.full((m,), 0.5, device=device, requires_grad=True)
        args = [y, xs, w1, w2, theta]
        bm, fl = _lista_bytes(b, m, n), _lista_flops(b, m, n)
        for provider, fn in (
            ("sdu_ext", sdu_ops.lista_layer),
            ("eager", reference.lista_layer),
            ("compile", torch.compile(reference.lista_layer)),
            ("matmul_only", _matmul_only),
        ):
            benches.append(Bench(case, "lista_layer", "-", provider, fn, args, grad_inputs=args,
                                 bytes_model=bm, flops=fl))
    return benches


def _matmul_only(y, xs, w1, w2, theta):  # noqa: ARG001 - same signature as lista_layer
    """The GEMMs of lista_layer alone: y @ W1.T + xs @ W2.T as one mm and one addmm."""
    return torch.addmm(torch.mm(y, w1.t()), xs, w2.t())


def _copy_benches(case: str, x: torch.Tensor) -> list[Bench]:
    src = x.detach()
    buf = torch.empty_like(src)
    bm = {"forward": 2 * src.numel() * src.element_size()}
    return [
        Bench(case, "copy", "-", "copy_fresh", lambda t: torch.empty_like(t).copy_(t), [src],
              modes=("forward",), bytes_model=bm),
        Bench(case, "copy", "-", "copy_prealloc", lambda t: buf.copy_(t), [src],
              modes=("forward",), bytes_model=bm),
    ]


def make_prepare(bench: Bench, mode: str) -> Callable[[], Callable[[], Any]]:
    """The untimed per-rep setup for ``bench`` in ``mode``; returns the timed callable."""
    grad_outputs: list[torch.Tensor] | None = None

    def args() -> list[Any]:
        return bench.fresh() if bench.fresh is not None else bench.inputs

    def grads_for(outs: list[torch.Tensor]) -> list[torch.Tensor]:
        nonlocal grad_outputs
        if grad_outputs is None:
            gen = torch.Generator(device="cpu").manual_seed(1)
            grad_outputs = [torch.randn(o.shape, generator=gen, dtype=o.dtype).to(o.device) for o in outs]
        return grad_outputs

    def backward(result: Any) -> Any:
        outs = bench.select(result)
        return torch.autograd.grad(outs, bench.grad_inputs, grads_for(outs), allow_unused=True)

    if mode == "forward":
        def prepare() -> Callable[[], Any]:
            a = args()
            return lambda: bench.fn(*a)
    elif mode == "backward":
        def prepare() -> Callable[[], Any]:
            result = bench.fn(*args())
            return lambda: backward(result)
    elif mode == "full":
        def prepare() -> Callable[[], Any]:
            a = args()
            return lambda: backward(bench.fn(*a))
    else:
        raise ValueError(mode)
    return prepare


def check_against(bench: Bench, baseline: Bench) -> float:
    """Max relative error (norm-wise) of outputs and gradients vs the baseline provider."""

    def outputs_and_grads(b: Bench) -> list[torch.Tensor]:
        a = b.fresh() if b.fresh is not None else b.inputs
        result = b.fn(*a)
        outs = b.select(result)
        gen = torch.Generator(device="cpu").manual_seed(2)
        gouts = [torch.randn(o.shape, generator=gen, dtype=o.dtype).to(o.device) for o in outs]
        grads = torch.autograd.grad(outs, b.grad_inputs, gouts, allow_unused=True)
        return [t.detach() for t in flatten_tensors(result)] + [g for g in grads if g is not None]

    got, want = outputs_and_grads(bench), outputs_and_grads(baseline)
    if len(got) != len(want):
        return math.inf
    err = 0.0
    for g, w in zip(got, want):
        g64, w64 = g.double(), w.double()
        denom = w64.norm().item() or 1.0
        err = max(err, (g64 - w64).norm().item() / denom)
    return err


def run_benchmarks(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Time every selected bench/mode; returns one dict per result row."""
    import sdu_ext

    device = args.device
    info = machine_info(device, sdu_ext.build_info())
    benches = build_benches(device, set(args.ops))
    jobs = [(b, m) for b in benches for m in b.modes]
    rows: list[dict[str, Any]] = []
    eager_of = {(b.case, b.op): b for b in benches if b.provider == "eager"}
    eager_of.update({(b.case, "soft_threshold_"): eager_of.get((b.case, "soft_threshold"))
                     for b in benches if b.op == "soft_threshold"})

    try:
        _run_jobs(args, jobs, rows, info, eager_of)
    except KeyboardInterrupt:
        # SIGINT, or SIGTERM from `timeout` (see main): keep what was measured.
        print(f"interrupted: writing the {len(rows)} of {len(jobs)} rows measured so far", file=sys.stderr)
        info["partial"] = f"{len(rows)}/{len(jobs)} jobs"
        for r in rows:
            r["partial"] = info["partial"]
    add_ratios(rows)
    return rows


def _run_jobs(args, jobs, rows, info, eager_of) -> None:
    device = args.device
    memory: dict[int, MemoryAccount | None] = {}
    errors: dict[int, float | None] = {}
    for bench, mode in tqdm(jobs, desc=f"ops[{device}]", unit="job", dynamic_ncols=True):
        warmup = args.warmup + (args.compile_warmup if bench.provider == "compile" else 0)
        prepare = make_prepare(bench, mode)
        times, first_call_s = time_job(prepare, device=device, reps=args.reps, warmup=warmup)
        t = summarize(times)
        key = id(bench)
        if key not in memory and bench.grad_inputs:
            a = bench.fresh() if bench.fresh is not None else bench.inputs
            tensor_inputs = [x for x in a if isinstance(x, torch.Tensor)]
            memory[key] = saved_for_backward(lambda: bench.fn(*a), tensor_inputs)
            base = eager_of.get((bench.case, bench.op))
            comparable = base is not None and base is not bench and bench.provider != "matmul_only"
            errors[key] = check_against(bench, base) if comparable else None
        mem = memory.get(key)
        peak = cuda_peak_bytes(prepare) if device == "cuda" else None
        nbytes = bench.bytes_model.get(mode)
        flops = bench.flops.get(mode)
        row: dict[str, Any] = {
            "case": bench.case, "op": bench.op, "variant": bench.variant,
            "provider": bench.provider, "mode": mode,
            "median_ms": t.median, "p20_ms": t.p20, "p80_ms": t.p80, "min_ms": t.min, "reps": t.reps,
            "bytes_model": nbytes,
            "gbps_median": nbytes / t.median / 1e6 if nbytes else None,
            "gbps_min": nbytes / t.min / 1e6 if nbytes else None,
            "gflops_median": flops / t.median / 1e6 if flops else None,
            "saved_for_backward_MB": mem.saved_bytes / MB if mem else None,
            "saved_extra_MB": mem.saved_extra_bytes / MB if mem else None,
            "output_MB": mem.output_bytes / MB if mem else None,
            "peak_MB": peak / MB if peak is not None else None,
            "rel_err_vs_eager": errors.get(key),
            "first_call_s": first_call_s,
            # Other processes competing for the cores distort every CPU figure.
            "loadavg_1m": os.getloadavg()[0],
        }
        row.update(info)
        rows.append(row)


def _lookup(rows: list[dict[str, Any]], **match: Any) -> dict[str, Any] | None:
    for r in rows:
        if all(r.get(k) == v for k, v in match.items()):
            return r
    return None


def add_ratios(rows: list[dict[str, Any]]) -> None:
    """Speedups vs eager/compile (baseline time / this time, >1 = faster) and fraction of copy bandwidth.

    Baselines are the out-of-place eager / compile rows of the same case and mode,
    so in-place rows are compared with the out-of-place compositions. Bandwidth
    fractions use the copy of the case's main tensor measured in the same run.
    """
    for r in rows:
        for name in ("eager", "compile"):
            base = next((b for b in rows if b["case"] == r["case"] and b["mode"] == r["mode"]
                         and b["provider"] == name and b["variant"] != "inplace"), None)
            r[f"speedup_vs_{name}"] = base["median_ms"] / r["median_ms"] if base else None
            r[f"speedup_vs_{name}_min"] = base["min_ms"] / r["min_ms"] if base else None
        for name in ("copy_prealloc", "copy_fresh"):
            copy = _lookup(rows, case=r["case"], provider=name)
            ok = copy and r.get("gbps_median") and copy.get("gbps_median") and not r["provider"].startswith("copy")
            r[f"frac_{name}"] = r["gbps_median"] / copy["gbps_median"] if ok else None


# --------------------------------------------------------------------------- targets

@dataclass
class Target:
    """One performance target and whether the measured figure meets it."""

    name: str
    value: float | None
    goal: str
    passed: bool | None


def _row(rows, case_prefix, provider, mode, variant=None):
    for r in rows:
        if (r["case"].startswith(case_prefix) and r["provider"] == provider and r["mode"] == mode
                and (variant is None or r["variant"] == variant)):
            return r
    return None


def _ratio(num, den, key="median_ms") -> float | None:
    if not num or not den or num.get(key) in (None, "") or den.get(key) in (None, ""):
        return None
    return float(num[key]) / float(den[key])


def targets(rows: list[dict[str, Any]]) -> list[Target]:
    """Check the project's performance targets against benchmark rows.

    Speedups are baseline time / sdu_ext time, so higher is better; the lista
    target is a time ratio (sdu_ext / matmul_only), lower is better.
    """
    out: list[Target] = []

    def at_least(name: str, value: float | None, goal: float) -> None:
        out.append(Target(name, value, f">= {goal:g}x", None if value is None else value >= goal))

    st = "soft_threshold "
    sdu_f = _row(rows, st, "sdu_ext", "forward", "out_of_place")
    at_least("soft_threshold forward vs compile", _ratio(_row(rows, st, "compile", "forward"), sdu_f), 1.0)
    sdu_full = _row(rows, st, "sdu_ext", "full", "out_of_place")
    at_least("soft_threshold full vs eager", _ratio(_row(rows, st, "eager", "full"), sdu_full), 4.0)
    at_least("soft_threshold full vs compile", _ratio(_row(rows, st, "compile", "full"), sdu_full), 1.1)
    at_least("soft_threshold_ (in place) vs out-of-place, forward",
             _ratio(sdu_f, _row(rows, st, "sdu_ext", "forward", "inplace")), 2.0)
    for mode in ("forward", "full"):
        ratio = _ratio(_row(rows, st, "sdu_ext", mode, "vmap"), _row(rows, st, "sdu_ext", mode, "out_of_place"))
        out.append(Target(f"soft_threshold vmap over rows / stacked call, {mode}", ratio, "<= 1.2x",
                          None if ratio is None else ratio <= 1.2))

    for form in DC_FORMS:
        dc = f"descent_constraints {form}"
        mine = _row(rows, dc, "sdu_ext", "full")
        for stat, key in (("median", "median_ms"), ("min", "min_ms")):
            at_least(f"{dc} full vs eager ({stat})", _ratio(_row(rows, dc, "eager", "full"), mine, key), 1.5)
            at_least(f"{dc} full vs compile ({stat})", _ratio(_row(rows, dc, "compile", "full"), mine, key), 1.0)

    lista_mine = _row(rows, "lista_layer", "sdu_ext", "full")
    ratio = _ratio(lista_mine, _row(rows, "lista_layer", "matmul_only", "full"))
    out.append(Target("lista_layer full time / matmul_only full time", ratio, "<= 1.1x",
                      None if ratio is None else ratio <= 1.1))
    saved = _ratio(lista_mine, _row(rows, "lista_layer", "eager", "full"), "saved_for_backward_MB")
    out.append(Target("lista_layer saved-for-backward / eager's", saved, "< 1x",
                      None if saved is None else saved < 1.0))
    return out


def format_targets(ts: list[Target]) -> str:
    """Markdown table of targets with PASS / MISS / n/a."""
    lines = ["| target | measured | goal | result |", "| --- | ---: | --- | --- |"]
    for t in ts:
        verdict = "n/a" if t.passed is None else ("PASS" if t.passed else "MISS")
        value = "n/a" if t.value is None else f"{t.value:.2f}x"
        lines.append(f"| {t.name} | {value} | {t.goal} | {verdict} |")
    return "\n".join(lines)


# --------------------------------------------------------------------------- output

CSV_FIELDS = [
    "case", "op", "variant", "provider", "mode", "median_ms", "p20_ms", "p80_ms", "min_ms", "reps",
    "speedup_vs_eager", "speedup_vs_eager_min", "speedup_vs_compile", "speedup_vs_compile_min",
    "bytes_model", "gbps_median", "gbps_min", "frac_copy_prealloc", "frac_copy_fresh", "gflops_median",
    "saved_for_backward_MB", "saved_extra_MB", "output_MB", "peak_MB", "rel_err_vs_eager", "first_call_s",
    "loadavg_1m",
]


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    """One row per result; machine-info columns follow the measurement columns."""
    extra = [k for k in rows[0] if k not in CSV_FIELDS]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS + extra)
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if v is None else v) for k, v in r.items()})


def read_csv(path: Path) -> list[dict[str, Any]]:
    """Rows of a CSV written by :func:`write_csv`, numbers parsed back to floats."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        for k in CSV_FIELDS[5:]:
            v = r.get(k)
            r[k] = float(v) if v not in (None, "") else None
    return rows


def _fmt(v: Any, spec: str) -> str:
    if v is None or v == "":
        return ""
    return format(float(v), spec)


def write_markdown(rows: list[dict[str, Any]], path: Path, device: str) -> None:
    """Header with machine/build info, one table per case, the target check and the byte models."""
    first = rows[0]
    info_keys = [k for k in first if k not in CSV_FIELDS]
    lines = [f"# sdu_ext op benchmarks ({device})", ""]
    lines += [f"- **{k}**: {first[k]}" for k in info_keys]
    lines += [
        f"- **reps / case**: {int(first['reps'])} (times in ms; speedup = baseline time / this time,"
        " >1 is faster; `/copy` = achieved GB/s over the same-run copy's GB/s)",
        "",
    ]
    for case in dict.fromkeys(r["case"] for r in rows):
        lines += [f"## {case}", ""]
        lines += [
            "| op | variant | provider | mode | median | p20 | p80 | min | vs eager | vs compile "
            "| vs eager (min) | vs compile (min) | GB/s | /copy prealloc | /copy fresh | GFLOP/s | saved_for_backward_MB "
            "| saved_extra_MB | output_MB | peak_MB | rel err | first call s | load 1m |",
            "| --- | --- | --- | --- |" + " ---: |" * 19,
        ]
        for r in rows:
            if r["case"] != case:
                continue
            lines.append(
                f"| {r['op']} | {r['variant']} | {r['provider']} | {r['mode']} "
                f"| {_fmt(r['median_ms'], '.3f')} | {_fmt(r['p20_ms'], '.3f')} | {_fmt(r['p80_ms'], '.3f')} "
                f"| {_fmt(r['min_ms'], '.3f')} | {_fmt(r['speedup_vs_eager'], '.2f')} "
                f"| {_fmt(r['speedup_vs_compile'], '.2f')} | {_fmt(r['speedup_vs_eager_min'], '.2f')} "
                f"| {_fmt(r['speedup_vs_compile_min'], '.2f')} "
                f"| {_fmt(r['gbps_median'], '.1f')} | {_fmt(r['frac_copy_prealloc'], '.2f')} "
                f"| {_fmt(r['frac_copy_fresh'], '.2f')} | {_fmt(r['gflops_median'], '.1f')} "
                f"| {_fmt(r['saved_for_backward_MB'], '.1f')} | {_fmt(r['saved_extra_MB'], '.1f')} "
                f"| {_fmt(r['output_MB'], '.1f')} | {_fmt(r['peak_MB'], '.1f')} "
                f"| {_fmt(r['rel_err_vs_eager'], '.1e')} | {_fmt(r['first_call_s'], '.2f')} "
                f"| {_fmt(r['loadavg_1m'], '.1f')} |"
            )
        lines.append("")
    lines += ["## Targets", "", format_targets(targets(rows)), "", NOTES]
    path.write_text("\n".join(lines) + "\n")


NOTES = """## Method

- Per rep, an untimed `prepare` builds the state (for `backward`, the forward graph; for
  in-place rows, the input buffer) and only the op is timed. CPU: `time.perf_counter`;
  CUDA: events around the call, a 256 MB buffer zeroed before each rep to flush L2,
  one `synchronize` per rep. Outputs are released after the clock stops.
- Warm-up: `--warmup` untimed reps per job, plus `--compile-warmup` more for `compile`.
  `first call s` is the first call's wall time (torch.compile's compilation included).
- In-place rows (`soft_threshold_`): each rep's input is `x.clone()` made untimed
  (autograd-tracked, so gradients reach `x` and `theta` exactly as in the out-of-place
  rows); the timed op then writes into that resident buffer, so no output allocation is
  timed. Their speedups are against the eager / compile *out-of-place* rows. The eager
  composition has no preallocated-output form; the `copy_prealloc` row is the context
  for what writing into a resident buffer costs.
- `saved_for_backward_MB`: unique storages packed by autograd's saved-tensor hooks during
  one forward (inputs and outputs included); `saved_extra_MB`: the part not owned by an
  input or an output, i.e. memory kept alive only for backward; `output_MB`: the outputs.
  `peak_MB` (CUDA only): `max_memory_allocated` during one timed call above what was live
  before it.
- `rel err`: max over outputs and gradients of ||this - eager|| / ||eager||.
- `load 1m`: the 1-minute load average when the row was written; this process counts
  for about one per busy thread, so anything well above `threads` means other work
  shared the cores and the CPU figures of that row are suspect.
- CPU figures for fresh outputs depend on `THP_MEM_ALLOC_ENABLE` (PyTorch's CPU
  allocator then asks for transparent huge pages, which changes the page-fault cost of
  every new allocation) and on the kernel's THP mode, both recorded above.
- Byte models (float32, N elements; P = (L+1)·B·m iterate elements, R = B·m):
  soft_threshold forward 8N, backward 12N (read grad and x, write grad_x), full 20N;
  descent_constraints forward 4(P+R), backward 4(2P+R), full 4(3P+2R);
  lista_layer (y (B,m), xs (B,n), W1 (m,m), W2 (m,n)) forward 4(2Bm+Bn+m²+mn),
  backward 4(2Bm+2(Bm+Bn+m²+mn)); FLOPs forward 2Bm(m+n), backward twice that.
"""


def format_compact(rows: list[dict[str, Any]]) -> str:
    """Short plain-text table of the timings for the terminal."""
    lines = [f"{'case':<44} {'variant':<14} {'provider':<13} {'mode':<8} {'median':>9} {'min':>9}"
             f" {'vs eager':>8} {'vs comp':>8} {'/copy':>6}"]
    for r in rows:
        lines.append(
            f"{r['case']:<44} {r['variant']:<14} {r['provider']:<13} {r['mode']:<8} "
            f"{_fmt(r['median_ms'], '9.3f')} {_fmt(r['min_ms'], '9.3f')} "
            f"{_fmt(r['speedup_vs_eager'], '8.2f'):>8} {_fmt(r['speedup_vs_compile'], '8.2f'):>8} "
            f"{_fmt(r['frac_copy_prealloc'], '6.2f'):>6}"
        )
    return "\n".join(lines)


def print_summary(rows: list[dict[str, Any]]) -> None:
    """Print the target check to stdout."""
    for t in targets(rows):
        verdict = "n/a " if t.passed is None else ("PASS" if t.passed else "MISS")
        value = "   n/a" if t.value is None else f"{t.value:6.2f}x"
        print(f"{verdict}  {value}  (goal {t.goal:>8})  {t.name}")


def readme_section(rows: list[dict[str, Any]], device: str, md_name: str) -> str:
    """The README's generated summary: where and when, sdu_ext vs baselines, the targets."""
    first = rows[0]
    where = (f"Measured {str(first.get('date', ''))[:10]} on {first.get('cpu_model', '?')}"
             f" ({device}, {first.get('threads', '?')} threads, torch {first.get('torch', '?')},"
             f" THP_MEM_ALLOC_ENABLE={first.get('THP_MEM_ALLOC_ENABLE', '?')},"
             f" {int(first['reps'])} reps; device {first.get('device_name', device)}).")
    lines = [where, "Times are medians in ms; speedup = baseline time / sdu_ext time. "
             f"Full table with p20/p80/min, memory and bandwidth: [benchmarks/results/{md_name}]"
             f"(benchmarks/results/{md_name}).", "",
             "| case | variant | mode | sdu_ext | eager | torch.compile | vs eager | vs compile |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        if r["provider"] != "sdu_ext":
            continue
        base = {p: _lookup(rows, case=r["case"], provider=p, mode=r["mode"]) for p in ("eager", "compile")}
        lines.append(
            f"| {r['case']} | {r['variant']} | {r['mode']} | {_fmt(r['median_ms'], '.2f')} "
            f"| {_fmt(base['eager'] and base['eager']['median_ms'], '.2f')} "
            f"| {_fmt(base['compile'] and base['compile']['median_ms'], '.2f')} "
            f"| {_fmt(r['speedup_vs_eager'], '.2f')} | {_fmt(r['speedup_vs_compile'], '.2f')} |")
    lines += ["", format_targets(targets(rows))]
    return "\n".join(lines)


def update_readme(rows: list[dict[str, Any]], device: str, md_name: str) -> None:
    """Replace the README's generated section for this device."""
    update_readme_section(f"ops:{device}", readme_section(rows, device, md_name))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--reps", type=int, default=None, help="timed reps per job (default 30, --quick 5)")
    p.add_argument("--warmup", type=int, default=None, help="untimed reps per job (default 3, --quick 2)")
    p.add_argument("--compile-warmup", type=int, default=3, help="extra warm-up reps for torch.compile")
    p.add_argument("--quick", action="store_true", help="fewer reps, same shapes")
    p.add_argument("--ops", nargs="+", default=["soft_threshold", "descent_constraints", "lista_layer"],
                   choices=["soft_threshold", "descent_constraints", "lista_layer"])
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads before running")
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    p.add_argument("--summary", action="store_true",
                   help="re-check the targets and re-render ops_<device>.md from an existing "
                        "ops_<device>.csv, without running anything")
    p.add_argument("--readme", action="store_true",
                   help="also rewrite the README's generated benchmark section for this device")
    args = p.parse_args(argv)
    if args.reps is None:
        args.reps = 5 if args.quick else 30
    if args.warmup is None:
        args.warmup = 2 if args.quick else 3
    return args


def main(argv: list[str] | None = None) -> int:
    """Entry point: run (or re-read) the benchmarks and write CSV + markdown."""
    args = parse_args(argv)
    csv_path = args.out / f"ops_{args.device}.csv"
    md_path = args.out / f"ops_{args.device}.md"
    if args.summary:
        rows = read_csv(csv_path)
        write_markdown(rows, md_path, args.device)
        if args.readme:
            update_readme(rows, args.device, md_path.name)
        print_summary(rows)
        return 0
    if args.device == "cuda" and not torch.cuda.is_available():
        print("--device cuda: torch.cuda.is_available() is False", file=sys.stderr)
        return 1
    if args.threads:
        torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    rows = run_benchmarks(args)
    if not rows:
        return 1
    write_csv(rows, csv_path)
    write_markdown(rows, md_path, args.device)
    if args.readme and "partial" not in rows[0]:
        update_readme(rows, args.device, md_path.name)
    print(format_compact(rows))
    print_summary(rows)
    print(f"wrote {csv_path} and {md_path}")
    return 2 if "partial" in rows[0] else 0


if __name__ == "__main__":
    sys.exit(main())
