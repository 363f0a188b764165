"""One LISTA training step, side by side: sdu_ext's trainer against eager, torch.compile and the GEMM floor.

Providers (one run, same shapes, same thread count)
    sdu_ext   ``PrimalDualTrainer.step(batch, read=False)`` with ``check_every=64``: the
              package's own training step (fused ops, its noise hook, its optimizer and dual
              step) without a host read inside the step; each step gets a fresh copy of the
              batch, as in training, so per-batch work is not cached
    sdu_compiled  the same trainer step with ``TrainConfig(compile=...)``: its forward, loss,
              constraints and Lagrangian (and their backward) under ``torch.compile``,
              ``"default"`` mode on CPU, ``"reduce-overhead"`` (CUDA graphs) on CUDA; the fused
              Adam and the dual step stay eager. Compiling traces the noise rule's residual
              form (two GEMMs per layer: the Gram form's cached products are eager-only)
    unopt     the same step on the unoptimised path of before issue 13: the single-tensor
              Adam loop (``optimizer_kwargs={"fused": False}``), the residual form of
              the noise rule (``LogGradientNoise(gram=False)``) and host reads every step
    eager     a clean PyTorch composition of the same step built from ``sdu_ext.reference``
              (Python-list iterates stacked, reference soft-threshold and constraints,
              the research noise rule with two GEMMs per layer, ``torch.optim.Adam``
              with its defaults, projected dual ascent)
    compile   the eager step's forward and Lagrangian under ``torch.compile`` (default
              mode); backward runs the compiled backward graph, Adam and the dual step
              run eagerly as in ``eager``
    floor     the step's GEMMs alone into preallocated outputs (``torch.mm(out=)``):
              per layer the two forward products, the backward products the step needs
              (dW1, dW2, and dy for layers 2..L) and, with noise, the rule's ``D y`` and
              ``D^T r`` for layers 1..L-1. The time no implementation can beat.

Step kinds
    constrained_noise   task loss + descent constraints (distance, mean_ratio, eps 0.05),
                        log-gradient noise between layers (SPEC section 4)
    constrained         the same without noise
    standard            task loss on the last layer only

Sizes
    paper   B 512, n 1024, m 1228, L 10 (the research LISTA setting)
    quick   B 256, n 250, m 500, L 10 (the synthetic quick size)

Usage
    python benchmarks/train_step.py [--device cpu|cuda] [--threads 1,2] [--reps N] [--sizes paper quick]
    python benchmarks/train_step.py --summary [--readme]     # re-read the CSV

Writes ``train_step_<device>.csv`` (one row per size/kind/threads/provider, machine info in
every row) and ``train_step_<device>.md`` under ``--out``. Peak memory is the peak resident
set above the resident set before the step on CPU (Linux VmHWM, reset before each measured
step; freed memory the allocator reuses does not show) and ``max_memory_allocated`` above
the live bytes on CUDA.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (machine_info, read_rows, sparse_coding, summarize, synchronize, time_job,  # noqa: E402
                    update_readme_section, write_rows)

import sdu_ext  # noqa: E402
from sdu_ext import reference  # noqa: E402
from sdu_ext.models import LISTA, LogGradientNoise  # noqa: E402
from sdu_ext.train import DescentConstraints, PrimalDualTrainer, TrainConfig  # noqa: E402

SIZES = {"paper": (512, 1024, 1228, 10), "quick": (256, 250, 500, 10)}  # (B, n, m, L)
KINDS = ("constrained_noise", "constrained", "standard")
PROVIDERS = ("sdu_ext", "sdu_compiled", "unopt", "eager", "compile", "floor")
EPS, FORM, LR, LR_DUAL = 0.05, "mean_ratio", 1e-6, 1e-3
MB = 1024.0 * 1024.0


@dataclass
class Problem:
    """One size's data: dictionary, a batch and its targets, and the ISTA-initialised weights."""

    D: torch.Tensor
    x: torch.Tensor
    y_star: torch.Tensor
    L: int

    @property
    def shape(self):
        return self.x.shape[0], self.D.shape[0], self.D.shape[1], self.L


def make_problem(size: str, device: str, seed: int = 0) -> Problem:
    B, n, m, L = SIZES[size]
    D, [(x, codes)] = sparse_coding(n, m, (B,), device, seed)
    return Problem(D.to(device), x, codes, L)


def _model(p: Problem, device: str) -> LISTA:
    return LISTA(p.D.cpu(), alpha=0.1, num_layers=p.L, init="ista").to(device)


# ---------------------------------------------------------------- eager / compile

def _lagrangian(weights, x, y_star, nu, noise_scale: float, constrained: bool, D):
    """Forward and Lagrangian of the eager step (``sdu_ext.reference`` composition)."""
    y = x.new_zeros(x.shape[0], D.shape[1])
    iterates = [y]
    L = len(weights)
    for l, (W1, W2, theta) in enumerate(weights):
        y = reference.lista_layer(y, x, W1, W2, theta)
        if noise_scale and l < L - 1:
            with torch.no_grad():
                grad = (y @ D.T - x) @ D
                s = torch.log(torch.linalg.vector_norm(grad, dim=1).clamp_min(torch.finfo(y.dtype).tiny))
                s = noise_scale * s.clamp_min(0)
            y = y + s.unsqueeze(1) * torch.randn_like(y)
        iterates.append(y)
    loss = 0.5 * (y - y_star).pow(2).sum(1).mean()
    if not constrained:
        return loss, None
    values, _ = reference.descent_constraints(torch.stack(iterates), y_star, EPS, FORM)
    return loss + (nu * values).sum(), values


class EagerStep:
    """The eager (or compiled) step: weights are plain leaf tensors, Adam with its defaults."""

    def __init__(self, p: Problem, kind: str, device: str, compiled: bool):
        model = _model(p, device)
        self.weights = [tuple(t.detach().clone().requires_grad_(True) for t in (lay.W1, lay.W2, lay.theta))
                        for lay in model.layers]
        self.opt = torch.optim.Adam([t for w in self.weights for t in w], lr=LR)
        self.nu = torch.zeros(p.L, device=device, dtype=p.x.dtype)
        self.p, self.constrained = p, kind != "standard"
        self.noise = 1.0 if kind == "constrained_noise" else 0.0
        self.fn = torch.compile(_lagrangian) if compiled else _lagrangian

    def __call__(self):
        p = self.p
        lag, values = self.fn(self.weights, p.x, p.y_star, self.nu, self.noise, self.constrained, p.D)
        self.opt.zero_grad(set_to_none=True)
        lag.backward()
        self.opt.step()
        if values is not None:
            self.nu = (self.nu + LR_DUAL * values.detach()).clamp_min(0)
        return lag


# ---------------------------------------------------------------- sdu_ext

class TrainerStep:
    """``PrimalDualTrainer.step`` on one resident batch."""

    def __init__(self, p: Problem, kind: str, device: str, fast: bool = True, compiled: bool = False):
        model = _model(p, device)
        mode = "standard" if kind == "standard" else "constrained"
        noise = LogGradientNoise(model.D, gram=None if fast else False) if kind == "constrained_noise" else None
        cfg = TrainConfig(epochs=1, batch_size=p.x.shape[0], lr=LR, lr_dual=LR_DUAL, mode=mode,
                          dual_every="batch", device=device, progress=False, seed=0,
                          optimizer_kwargs={} if fast else {"fused": False}, check_every=64 if fast else 1,
                          compile=("reduce-overhead" if device == "cuda" else "default") if compiled else None)
        constraints = DescentConstraints("distance", FORM, eps=EPS) if mode == "constrained" else None
        self.trainer = PrimalDualTrainer(model, (p.x, p.y_star), None, cfg, constraints, noise=noise)
        self.batch = (p.x, p.y_star)
        self.read = not fast  # sdu_ext: no host read inside the step (finiteness read every 64 steps)

    def __call__(self):
        return self.trainer.step((self.batch[0].clone(), self.batch[1]), read=self.read)


# ---------------------------------------------------------------- floor

class GemmFloor:
    """The step's GEMMs alone, into outputs allocated once."""

    def __init__(self, p: Problem, kind: str, device: str):
        B, n, m, L = p.shape
        dt = p.x.dtype
        new = lambda *s: torch.randn(*s, device=device, dtype=dt)  # noqa: E731
        self.L, self.noise = L, kind == "constrained_noise"
        self.W1, self.W2, self.D = new(m, m), new(m, n), p.D
        self.y, self.x, self.g = new(B, m), p.x, new(B, m)
        self.out_m, self.out_m2, self.out_n = new(B, m), new(B, m), new(B, n)
        self.dW1, self.dW2 = new(m, m), new(m, n)

    def __call__(self):
        mm = torch.mm
        for l in range(self.L):
            mm(self.y, self.W1.T, out=self.out_m)             # W1 y
            mm(self.x, self.W2.T, out=self.out_m2)            # W2 xs
            if self.noise and l < self.L - 1:
                mm(self.out_m, self.D.T, out=self.out_n)      # D y
                mm(self.out_n, self.D, out=self.out_m2)       # D^T r
        for l in range(self.L):
            mm(self.g.T, self.y, out=self.dW1)                # dW1 = gz^T y
            mm(self.g.T, self.x, out=self.dW2)                # dW2 = gz^T xs
            if l > 0:
                mm(self.g, self.W1, out=self.out_m)           # dy = gz W1
        return self.out_m


def make_step(provider: str, p: Problem, kind: str, device: str) -> Callable[[], Any]:
    if provider in ("sdu_ext", "sdu_compiled", "unopt"):
        return TrainerStep(p, kind, device, fast=provider != "unopt", compiled=provider == "sdu_compiled")
    if provider in ("eager", "compile"):
        return EagerStep(p, kind, device, compiled=provider == "compile")
    return GemmFloor(p, kind, device)


# ---------------------------------------------------------------- measurement

def _rss_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def peak_bytes(step: Callable[[], Any], device: str) -> float:
    """Peak memory of one step above what was live before it (see the module docstring)."""
    if device == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        return float(torch.cuda.max_memory_allocated() - base)
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return float("nan")
    base = _rss_kb("VmRSS")
    step()
    return float(max(_rss_kb("VmHWM") - base, 0) * 1024)


def run(args) -> list[dict[str, Any]]:
    rows = []
    info = machine_info(args.device, sdu_ext.build_info())
    jobs = [(s, k, t, pr) for s in args.sizes for t in args.threads for k in args.kinds for pr in args.providers]
    bar = tqdm(jobs, desc="train_step", dynamic_ncols=True)
    problems = {s: make_problem(s, args.device) for s in args.sizes}
    for size, kind, threads, provider in bar:
        bar.set_postfix_str(f"{size} {kind} t={threads} {provider}")
        torch.set_num_threads(threads)
        p = problems[size]
        step = make_step(provider, p, kind, args.device)
        load = os.getloadavg()[0]
        times, first_s = time_job(lambda: step, device=args.device, reps=args.reps, warmup=args.warmup)
        peak = peak_bytes(step, args.device)
        t = summarize(times)
        B = p.x.shape[0]
        rows.append({**info, "threads": threads, "size": size, "kind": kind, "provider": provider,
                     "B": B, "n": p.D.shape[0], "m": p.D.shape[1], "L": p.L,
                     "ms_median": t.median, "ms_p20": t.p20, "ms_p80": t.p80, "reps": t.reps,
                     "samples_per_s": B / (t.median / 1e3), "peak_mb": peak / MB,
                     "first_call_s": first_s, "load1": load})
        del step
    return rows


# ---------------------------------------------------------------- output

def csv_path(out: Path, device: str) -> Path:
    return out / f"train_step_{device}.csv"


# Targets of issue 13 (CPU): ratio of sdu_ext's step to the floor, and compile's time over ours
# (the verdict takes sdu_ext's better configuration: eager or TrainConfig(compile=...)).
TARGETS = {"constrained_noise": (1.15, 1.2), "constrained": (None, None), "standard": (1.10, None)}


def table(rows) -> str:
    by = {(r["size"], r["kind"], str(r["threads"]), r["provider"]): r for r in rows}
    keys = sorted({(r["size"], r["kind"], str(r["threads"])) for r in rows},
                  key=lambda k: (list(SIZES).index(k[0]), int(k[2]), KINDS.index(k[1])))
    head = ("| size | step | threads | sdu_ext ms | sdu_compiled ms | unopt ms | eager ms | compile ms | floor ms "
            "| sdu_ext / floor | sdu_compiled / floor | unopt / floor | compile / sdu_ext | compile / sdu_compiled "
            "| eager / sdu_ext | samples/s (sdu_ext) | peak MB sdu_ext / eager / compile | target |")
    lines = [head, "|" + " --- |" * (head.count("|") - 1)]
    for size, kind, threads in keys:
        get = lambda pr: by.get((size, kind, threads, pr))  # noqa: E731
        ms = {pr: float(get(pr)["ms_median"]) if get(pr) else float("nan") for pr in PROVIDERS}
        peak = {pr: float(get(pr)["peak_mb"]) if get(pr) else float("nan") for pr in PROVIDERS}
        floor_r, comp_r = ms["sdu_ext"] / ms["floor"], ms["compile"] / ms["sdu_ext"]
        floor_c, comp_c = ms["sdu_compiled"] / ms["floor"], ms["compile"] / ms["sdu_compiled"]
        tf, tc = TARGETS[kind]
        verdict = []
        if size == "paper" and tf is not None:
            verdict.append(f"floor <= {tf}: {'met' if min(floor_r, floor_c) <= tf else 'missed'}")
        if size == "paper" and tc is not None:
            verdict.append(f"compile >= {tc}: {'met' if max(comp_r, comp_c) >= tc else 'missed'}")
        sps = float(get("sdu_ext")["samples_per_s"]) if get("sdu_ext") else float("nan")
        lines.append(f"| {size} | {kind} | {threads} | {ms['sdu_ext']:.1f} | {ms['sdu_compiled']:.1f} | "
                     f"{ms['unopt']:.1f} | {ms['eager']:.1f} | {ms['compile']:.1f} | {ms['floor']:.1f} | "
                     f"{floor_r:.2f}x | {floor_c:.2f}x | {ms['unopt'] / ms['floor']:.2f}x | {comp_r:.2f}x | "
                     f"{comp_c:.2f}x | {ms['eager'] / ms['sdu_ext']:.2f}x | {sps:,.0f} | "
                     f"{peak['sdu_ext']:.0f} / {peak['eager']:.0f} / {peak['compile']:.0f} | "
                     f"{'; '.join(verdict) or '-'} |")
    return "\n".join(lines)


def header(rows) -> str:
    r = rows[0]
    loads = [float(x["load1"]) for x in rows]
    return (f"Machine: {r['cpu_model']} ({r['device_name']}), torch {r['torch']}, date {r['date'][:10]}, "
            f"git {r['git']}; threads as listed; 1-minute load during the run {min(loads):.1f}-{max(loads):.1f}. "
            f"Median of {r['reps']} steps (20th-80th percentile in the CSV).")


def write_markdown(rows, path: Path) -> str:
    body = header(rows) + "\n\n" + table(rows)
    path.write_text("# Training-step benchmark\n\n" + __doc__.split("\n\n")[1] + "\n\n" + body + "\n")
    return body


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    ap.add_argument("--sizes", nargs="+", choices=list(SIZES), default=list(SIZES))
    ap.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS))
    ap.add_argument("--providers", nargs="+", choices=PROVIDERS, default=list(PROVIDERS))
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    ap.add_argument("--summary", action="store_true", help="re-read the CSV instead of running")
    ap.add_argument("--readme", action="store_true", help="also rewrite the README's generated section")
    args = ap.parse_args(argv)
    args.threads = [int(t) for t in args.threads.split(",")]
    path = csv_path(args.out, args.device)
    if args.summary:
        rows = read_rows(path)
    else:
        rows = run(args)
        write_rows(rows, path)
    body = write_markdown(rows, args.out / f"train_step_{args.device}.md")
    print(body)
    if args.readme:
        update_readme_section(f"train_step:{args.device}", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
