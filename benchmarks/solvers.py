"""Certified LASSO solves: sdu_ext.solvers.solve_lasso against scikit-learn's lasso_cd.

Both sides are stopped at the same certified accuracy — every signal's float64
duality gap at most ``--tol`` (default 1e-6) of its objective — and the gap of
BOTH outputs is computed by the same code, ``Lasso.duality_gap``.

Providers
    solve_lasso   sdu_ext.solvers.solve_lasso(problem, x, tol)
    lasso_cd      exactly what ``sklearn.decomposition.sparse_encode(X, D.T,
                  algorithm="lasso_cd", alpha=alpha)`` runs (Gram matrix, then
                  ``Lasso(alpha=alpha / n_features, precompute=gram, fit_intercept=False,
                  warm_start=True).fit(D, X.T)``), with the coordinate-descent tolerance
                  exposed: sparse_encode hard-codes tol=1e-8 (checked to give identical
                  codes). Its tol is tuned on the batch: the largest of 1e-4 .. 1e-10 whose
                  output certifies is timed and reported. Note the alpha scaling:
                  sparse_encode divides alpha by n_features and sklearn's Lasso divides
                  its data term by n_samples = n_features, so the minimiser is ours with
                  the same alpha, no conversion.
    fista         sdu_ext.solvers.fista, float32, stopped at a relative change of 1e-6
                  (what a plain solver does; for context, usually uncertified)

Problems
    gaussian  (n, m, B) = (1024, 1228, 2048): the `synthetic` generator at that size
              (N(0, 1/n) unit-norm columns, Bernoulli(0.1) x N(0, 1) codes), alpha 0.1:
              about 117 non-zeros per LASSO code
    patches   the `patches` data set (uniform [0, 1] dictionary, alpha 0.5, n 1024,
              m 1228): lasso_cd does not certify it in any practical time, so it runs
              on the first ``--patches-cd-batch`` signals with ``--patches-cd-iter``
              sweeps and is reported with the accuracy it reached

Usage
    python benchmarks/solvers.py [--threads 1,2] [--reps 3] [--quick] [--out DIR] [--readme]
    python benchmarks/solvers.py --summary [--out DIR] [--readme]   # re-read the CSV

Writes solvers_cpu.csv (one row per problem/provider/threads, machine info in every
row) and solvers_cpu.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_info, read_rows, update_readme_section, write_rows  # noqa: E402

import sdu_ext  # noqa: E402
from sdu_ext import solvers  # noqa: E402
from sdu_ext.problems import Lasso, load  # noqa: E402

CD_TOLS = (1e-4, 1e-5, 1e-6, 1e-7, 1e-8, 1e-9, 1e-10)


def load_avg() -> float:
    return os.getloadavg()[0]


def gaussian_problem(batch):
    data = load(name="synthetic", n=1024, m=1228, alpha=0.1, n_train=batch, n_val=0, n_test=0,
                reference="ista", ista_steps=0, dtype="float64", cache=False, progress=False)
    return data.problem, data.train.x


def patches_problem(batch):
    data = load(name="patches", n_train=batch, n_val=0, n_test=0, reference="ista", ista_steps=0,
                dtype="float64", cache=False, progress=False)
    return data.problem, data.train.x


def certify(problem, codes, x, tol):
    """(all certified, max relative gap, mean non-zeros) by Lasso.duality_gap in float64."""
    codes = codes.to(torch.float64)
    gap = problem.duality_gap(codes, x)
    rel = gap / problem.value(codes, x).clamp_min(1e-300)
    return bool((rel <= tol).all()), float(rel.max()), float((codes != 0).sum(1).float().mean())


def lasso_cd(D, X, alpha, tol, max_iter=1000):
    """sparse_encode(X, D.T, algorithm="lasso_cd", alpha=alpha) with its tol exposed."""
    from sklearn.linear_model import Lasso as SkLasso

    dictionary = D.T  # sklearn's (n_components, n_features)
    gram = np.dot(dictionary, dictionary.T)
    clf = SkLasso(alpha=alpha / X.shape[1], fit_intercept=False, precompute=gram, tol=tol,
                  max_iter=max_iter, warm_start=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clf.fit(dictionary.T, X.T, check_input=False)
    return clf.coef_, np.asarray(clf.n_iter_)


def check_replica(D, X, alpha):
    """Our lasso_cd at tol=1e-8 is sparse_encode's lasso_cd."""
    from sklearn.decomposition import sparse_encode

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = sparse_encode(X, D.T, algorithm="lasso_cd", alpha=alpha)
    mine, _ = lasso_cd(D, X, alpha, 1e-8)
    if not np.array_equal(ref, mine):
        raise RuntimeError("lasso_cd replica differs from sklearn.decomposition.sparse_encode")


def timed(fn, reps):
    times, out = [], None
    for _ in range(reps):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return out, times


def run_ours(problem, x, tol, reps):
    res, times = timed(lambda: solvers.solve_lasso(problem, x, tol=tol, progress=False), reps)
    ok, gmax, nnz = certify(problem, res.codes, x, tol)
    return dict(provider="solve_lasso", times=times, certified=ok, max_rel_gap=gmax, nnz=nnz,
                iters_max=res.n_iter, iters_mean=float(res.iterations.float().mean()), setting=f"tol={tol:g}")


def run_fista(problem, x, tol, reps):
    p32 = Lasso(problem.D.float(), problem.alpha)
    res, times = timed(lambda: solvers.fista(p32, x.float(), max_iter=2000, tol=1e-6, progress=False), reps)
    ok, gmax, nnz = certify(problem, res.codes, x, tol)
    return dict(provider="fista", times=times, certified=ok, max_rel_gap=gmax, nnz=nnz,
                iters_max=res.n_iter, iters_mean=float(res.iterations.float().mean()),
                setting="float32, rel. change 1e-6")


def run_cd(problem, x, tol, reps, max_iter=1000, tols=CD_TOLS):
    D, X = problem.D.double().numpy(), x.double().numpy()
    tried = []
    for cd_tol in tols:
        (codes, n_iter), times = timed(lambda: lasso_cd(D, X, problem.alpha, cd_tol, max_iter), 1)
        ok, gmax, nnz = certify(problem, torch.from_numpy(codes), x, tol)
        tried.append(f"{cd_tol:g}:{'ok' if ok else f'{gmax:.1e}'}")
        if ok or cd_tol == tols[-1]:
            break
    if reps > 1:
        _, more = timed(lambda: lasso_cd(D, X, problem.alpha, cd_tol, max_iter), reps - 1)
        times += more
    return dict(provider="lasso_cd", times=times, certified=ok, max_rel_gap=gmax, nnz=nnz,
                iters_max=int(n_iter.max()), iters_mean=float(n_iter.mean()),
                setting=f"tol={cd_tol:g} max_iter={max_iter} (tried {' '.join(tried)})")


def bench(args):
    rows = []
    info = machine_info("cpu", sdu_ext.build_info())
    problems = [("gaussian", gaussian_problem, args.batch)]
    if not args.skip_patches:
        problems.append(("patches", patches_problem, args.patches_batch))
    for threads in args.threads:
        torch.set_num_threads(threads)
        try:
            from threadpoolctl import threadpool_limits
            limit = threadpool_limits(threads)
        except ImportError:
            limit = None
        for name, make, batch in problems:
            problem, x = make(batch)
            if name == "gaussian" and threads == args.threads[0]:
                check_replica(problem.D.numpy(), x[:64].numpy(), problem.alpha)
            results = []
            load0 = load_avg()
            results.append(run_ours(problem, x, args.tol, args.reps))
            if name == "gaussian":
                results.append(run_cd(problem, x, args.tol, args.reps))
                results.append(run_fista(problem, x, args.tol, 1))
            else:
                k = args.patches_cd_batch
                sub = run_ours(problem, x[:k], args.tol, args.reps)
                sub["provider"] = f"solve_lasso[:{k}]"
                results.append(sub)
                cd = run_cd(problem, x[:k], args.tol, 1, max_iter=args.patches_cd_iter, tols=(1e-8,))
                cd["provider"] = f"lasso_cd[:{k}]"
                results.append(cd)
            load1 = load_avg()
            ours = {r["provider"]: float(np.median(r["times"])) for r in results}
            for r in results:
                t = float(np.median(r["times"]))
                base = ours["solve_lasso[:%d]" % args.patches_cd_batch] if r["provider"].startswith(
                    "lasso_cd[:") else ours["solve_lasso"]
                rows.append({
                    **info,  # first: the row's own fields (threads!) must not be overwritten by the machine's
                    "problem": name, "provider": r["provider"], "threads": threads,
                    "batch": batch if "[:" not in r["provider"] else args.patches_cd_batch,
                    "time_s": round(t, 4), "time_min_s": round(min(r["times"]), 4), "reps": len(r["times"]),
                    "time_vs_solve_lasso": round(t / base, 2),
                    "certified": r["certified"], "max_rel_gap": f"{r['max_rel_gap']:.2e}",
                    "iters_max": r["iters_max"], "iters_mean": round(r["iters_mean"], 1),
                    "nnz_mean": round(r["nnz"], 1), "setting": r["setting"],
                    "load1_before": round(load0, 2), "load1_after": round(load1, 2),
                })
                print(f"{name:9s} thr={threads} {r['provider']:18s} {t:8.3f} s  x{t / base:6.2f}  "
                      f"certified={r['certified']!s:5s} max_gap={r['max_rel_gap']:.1e} "
                      f"iters={r['iters_max']} {r['setting']}", flush=True)
        if limit is not None:
            limit.unregister() if hasattr(limit, "unregister") else None
    return rows, info


def write(rows, info, out: Path, args):
    write_rows(rows, out / "solvers_cpu.csv")
    cols = ["problem", "provider", "threads", "batch", "time_s", "time_min_s", "reps", "time_vs_solve_lasso",
            "certified", "max_rel_gap", "iters_max", "iters_mean", "nnz_mean", "load1_before",
            "load1_after", "setting"]
    lines = ["# Certified LASSO solves (cpu)", ""]
    lines += [f"- **{k}**: {v}" for k, v in info.items()]
    lines += [f"- **target**: every signal's duality gap <= {args.tol:g} x its objective, checked by "
              "`Lasso.duality_gap` (float64) for every provider",
              "- **time_vs_solve_lasso**: provider time / solve_lasso time on the same signals "
              "(> 1: solve_lasso is faster); medians over `reps`",
              "- **load1**: 1-minute load average before/after the problem's runs (other jobs share "
              "the machine; compare ratios, not absolute times)", ""]
    lines += ["| " + " | ".join(cols) + " |", "|" + " --- |" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join(str(r[c]) for c in cols) + " |")
    (out / "solvers_cpu.md").write_text("\n".join(lines) + "\n")


def read_results(out: Path):
    return read_rows(out / "solvers_cpu.csv")


def readme_section(rows) -> str:
    """The README's generated summary: solve_lasso vs lasso_cd per problem and thread count."""
    first = rows[0]
    lines = [f"Measured {str(first['date'])[:10]} on {first['cpu_model']} (torch {first['torch']}, 1-minute load "
             f"{first['load1_before']}-{max(float(r['load1_after']) for r in rows):.1f}: compare ratios). Time to "
             "certify every signal's duality gap <= 1e-6 x its objective (both checked by the same float64 gap); "
             "full table: [benchmarks/results/solvers_cpu.md](benchmarks/results/solvers_cpu.md).", "",
             "| problem | threads | signals | solve_lasso s | lasso_cd s | lasso_cd / solve_lasso | lasso_cd certified |",
             "| --- | ---: | ---: | ---: | ---: | ---: | --- |"]
    latest = {}  # rows come in blocks (problem, threads): pair each lasso_cd with its block's solve_lasso
    for r in rows:
        if r["provider"].startswith("solve_lasso"):
            latest[r["provider"]] = r
        if not r["provider"].startswith("lasso_cd"):
            continue
        ours = latest[r["provider"].replace("lasso_cd", "solve_lasso")]
        cert = "yes" if r["certified"] == "True" else f"no (gap {r['max_rel_gap']} after {r['iters_max']} sweeps)"
        lines.append(f"| {r['problem']} | {r['threads']} | {r['batch']} | {float(ours['time_s']):.2f} | "
                     f"{float(r['time_s']):.2f} | {float(r['time_s']) / float(ours['time_s']):.2f} | {cert} |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", default="2,1", help="comma-separated torch/BLAS thread counts")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--tol", type=float, default=1e-6)
    ap.add_argument("--batch", type=int, default=2048)
    ap.add_argument("--patches-batch", type=int, default=2048)
    ap.add_argument("--patches-cd-batch", type=int, default=8)
    ap.add_argument("--patches-cd-iter", type=int, default=20000)
    ap.add_argument("--skip-patches", action="store_true")
    ap.add_argument("--quick", action="store_true", help="small batches, one rep (smoke test)")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    ap.add_argument("--summary", action="store_true", help="re-read solvers_cpu.csv instead of running")
    ap.add_argument("--readme", action="store_true", help="also rewrite the README's generated solver section")
    args = ap.parse_args(argv)
    if args.summary:
        rows = read_results(args.out)
        print(readme_section(rows))
        if args.readme:
            update_readme_section("solvers:cpu", readme_section(rows))
        return 0
    args.threads = [int(t) for t in args.threads.split(",")]
    if args.quick:
        args.reps, args.batch, args.patches_batch = 1, 256, 64
        args.patches_cd_batch, args.patches_cd_iter = 2, 2000
    rows, info = bench(args)
    if not args.quick:
        write(rows, info, args.out, args)
        print(f"wrote {args.out / 'solvers_cpu.csv'} and {args.out / 'solvers_cpu.md'}")
        if args.readme:
            update_readme_section("solvers:cpu", readme_section(read_results(args.out)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
