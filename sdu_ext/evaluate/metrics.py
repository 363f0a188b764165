"""Per-layer metrics of unrolled sparse-coding networks (SPEC section 6).

Every metric is computed from the stacked iterates (L+1, N, m) of a model on N
signals x (N, n) with LASSO optima y* (N, m), index 0 being the initial point.

NMSE convention: ``nmse_db`` is the ratio of the sums over the samples,
``10 log10( sum_b ||y_l,b - y*_b||^2 / sum_b ||y*_b||^2 )``, i.e. the expectation is
taken in the numerator and the denominator separately before the log, as in the
learned-ISTA literature (LISTA-CP, ALISTA and the robust-unrolling paper plot
``E||y_l - y*||^2 / E||y*||^2`` in dB). Unlike the mean of per-sample dB values it is
finite when some y*_b = 0 and is not dominated by the samples with the smallest
optima.
"""
import math
import warnings
from typing import Any, Dict, List, Optional, Sequence

import torch
from torch import nn

from .. import ops
from ..checks import check_count, check_tensor

__all__ = ["QUANTILES", "run_iterates", "nmse_db", "descending_frequency", "layer_metrics", "evaluate_model",
           "iterations_to_match"]

QUANTILES = (0.1, 0.5, 0.9)


def _check_pair(iterates, reference, name="iterates", reference_name="reference"):
    if not isinstance(iterates, torch.Tensor) or iterates.dim() != 3:
        got = tuple(iterates.shape) if isinstance(iterates, torch.Tensor) else type(iterates).__name__
        raise ValueError(f"{name}: expected stacked iterates (L+1, N, m), got {got}")
    if reference is not None:
        check_tensor(reference, reference_name, "a tensor (N, m)")
    if reference is not None and tuple(reference.shape) != tuple(iterates.shape[1:]):
        raise ValueError(f"{reference_name}: expected shape (N, m) = {tuple(iterates.shape[1:])} to match {name}, "
                         f"got {tuple(reference.shape)}")


@torch.no_grad()
def run_iterates(model: nn.Module, x: torch.Tensor, *, noise=None, y0: Optional[torch.Tensor] = None,
                 generator: Optional[torch.Generator] = None, batch_size: int = 1024) -> torch.Tensor:
    """The model's stacked iterates on ``x`` without gradients, in chunks of ``batch_size``.

    Args:
        model: an :class:`~sdu_ext.models.Unrolled` model (put in eval mode here).
        x: (N, n) signals in the model's dtype and device.
        noise: optional noise hook applied after layers 1..L-1.
        y0: optional initial points (N, m) in the model's output domain.
        generator: optional ``torch.Generator`` for random initial points
            (``paper`` LISTA) when ``y0`` is None.
        batch_size: an integer >= 1.
    Returns (L+1, N, m) in the model's dtype, on its device.
    """
    check_tensor(x, "x", "a tensor (N, n)", dims=2)
    batch_size = check_count(batch_size, "batch_size")
    model.eval()
    out = []
    for start in range(0, x.shape[0], batch_size):
        sl = slice(start, start + batch_size)
        out.append(model(x[sl], return_all=True, noise=noise,
                         y0=None if y0 is None else y0[sl], generator=generator))
    return torch.cat(out, dim=1)


def nmse_db(estimates: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """NMSE in dB of each layer (see the module docstring for the averaging).

    Args:
        estimates: (L+1, N, m) iterates, or (N, m) for one layer.
        reference: (N, m) optima y*.
    Returns a float64 tensor (L+1,) (or a 0-dim tensor for (N, m) input); -inf when
    the estimates are exact, +inf (with a warning) when every y*_b is 0.
    """
    check_tensor(estimates, "estimates", "a tensor (L+1, N, m) or (N, m)")
    single = estimates.dim() == 2
    it = estimates.unsqueeze(0) if single else estimates
    _check_pair(it, reference, "estimates")
    it, ref = it.to(torch.float64), reference.to(torch.float64)
    err = (it - ref).pow(2).sum(dim=(1, 2))
    energy = ref.pow(2).sum()
    if energy == 0:
        warnings.warn("nmse_db: every reference y* is 0; the NMSE is undefined (reported as +inf)")
        out = torch.where(err > 0, torch.full_like(err, math.inf), torch.full_like(err, math.nan))
    else:
        out = 10.0 * torch.log10(err / energy)
    return out[0] if single else out


def descending_frequency(iterates: torch.Tensor, reference: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Fraction of samples whose residual decreases at each layer, (L,) float64.

    ``r_{l,b} = ||iterates[l, b] - reference[b]||`` (or ``||iterates[l, b]||`` when
    ``reference`` is None, e.g. for stacked gradients), through the fused
    :func:`sdu_ext.ops.residual_norms`; layer l descends on sample b when
    ``r_{l,b} < r_{l-1,b}`` (strictly: a sample that stays put does not descend).
    """
    _check_pair(iterates, reference)
    return _descending(ops.residual_norms(iterates, reference))


def _descending(norms):
    return (norms[1:] < norms[:-1]).to(torch.float64).mean(dim=1)


def _stacked_objective(problem, iterates, x):
    L1, N, m = iterates.shape
    xr = x.unsqueeze(0).expand(L1, *x.shape).reshape(L1 * N, x.shape[-1])
    return problem.value(iterates.reshape(L1 * N, m), xr).reshape(L1, N)


@torch.no_grad()
def layer_metrics(iterates: torch.Tensor, x: torch.Tensor, y_star: torch.Tensor, problem) -> Dict[str, Any]:
    """Per-layer metrics of one model on one data set (SPEC section 6).

    Args:
        iterates: (L+1, N, m) stacked iterates (row 0 = initial point).
        x: (N, n) signals; y_star: (N, m) their LASSO optima.
        problem: the :class:`~sdu_ext.problems.Lasso` (objective values).
    Returns a JSON-ready dict; lists of length L+1 are indexed by layer (0 = initial
    point), lists of length L by layers 1..L:
        ``count``, ``zero_reference`` (samples with y* = 0: their distance cannot
        decrease once reached, so they count as not descending);
        ``distance_mean``, ``distance_std``, ``distance_q10``, ``distance_median``,
        ``distance_q90``: ||y_l - y*|| over samples;
        ``nmse_db``; ``objective_mean`` (mean f(y_l; x)), ``objective_star`` (mean f(y*; x)),
        ``objective_gap`` (mean f(y_l) - f(y*));
        ``l1_mean`` (mean ||y_l||_1; the last entry is the sparsity of the output),
        ``l1_star``, ``support_fraction`` (fraction of non-zero entries);
        ``descending`` (L,): fraction with r_l < r_{l-1} for r = ||y_l - y*||.
    """
    _check_pair(iterates, y_star, reference_name="y_star")
    check_tensor(x, "x", "a tensor (N, n)", dims=2)
    norms = ops.residual_norms(iterates, y_star).to(torch.float64)
    q = torch.quantile(norms, torch.tensor(QUANTILES, dtype=torch.float64, device=norms.device), dim=1)
    it64 = iterates.to(torch.float64)
    obj = _stacked_objective(problem, iterates, x).to(torch.float64)
    obj_star = problem.value(y_star, x).to(torch.float64)
    zero = int((y_star.abs().sum(dim=1) == 0).sum())
    return {
        "count": int(iterates.shape[1]),
        "zero_reference": zero,
        "distance_mean": norms.mean(dim=1).tolist(),
        "distance_std": norms.std(dim=1, correction=0).tolist(),
        "distance_q10": q[0].tolist(),
        "distance_median": q[1].tolist(),
        "distance_q90": q[2].tolist(),
        "nmse_db": nmse_db(iterates, y_star).tolist(),
        "objective_mean": obj.mean(dim=1).tolist(),
        "objective_star": float(obj_star.mean()),
        "objective_gap": (obj - obj_star).mean(dim=1).tolist(),
        "l1_mean": it64.abs().sum(dim=2).mean(dim=1).tolist(),
        "l1_star": float(y_star.to(torch.float64).abs().sum(dim=1).mean()),
        "support_fraction": (iterates != 0).to(torch.float64).mean(dim=(1, 2)).tolist(),
        "descending": _descending(norms).tolist(),
    }


def evaluate_model(model: nn.Module, x: torch.Tensor, y_star: torch.Tensor, *,
                   generator: Optional[torch.Generator] = None, batch_size: int = 1024) -> Dict[str, Any]:
    """:func:`layer_metrics` of ``model`` on clean data (no noise, default initial point;
    ``generator`` seeds the random initial point of ``paper`` LISTA)."""
    it = run_iterates(model, x, generator=generator, batch_size=batch_size)
    return layer_metrics(it, x, y_star, model.problem)


def iterations_to_match(problem, x: torch.Tensor, y_star: torch.Tensor, targets_db: Sequence[float], *,
                        method: str = "fista", max_iter: int = 10000) -> List[Optional[int]]:
    """The learned-optimizer view: how many classic iterations reach a given NMSE.

    Runs ``method`` ("ista" or "fista", step 1 / Lip, from y_0 = 0, float64; see
    :mod:`sdu_ext.solvers`) on ``x`` (N, n) and returns, for every target NMSE in dB
    (e.g. the final-layer NMSE of trained L-layer networks), the first iteration whose
    iterate has :func:`nmse_db` against ``y_star`` (N, m) at or below the target, or
    None if ``max_iter`` iterations do not reach it.
    """
    from .. import solvers

    if method not in ("ista", "fista"):
        raise ValueError(f"method: expected 'ista' or 'fista', got {method!r}")
    check_tensor(y_star, "y_star", "a tensor (N, m)", dims=2)
    targets = [float(t) for t in targets_db]
    if any(math.isnan(t) for t in targets):
        raise ValueError(f"targets_db: expected numbers, got {targets_db!r}")
    found = [None] * len(targets)
    ref = y_star.to(torch.float64)

    def record(k, rows, codes):  # tol=0: every signal iterates, so codes are all N rows in order
        value = float(nmse_db(codes, ref))
        for i, t in enumerate(targets):
            if found[i] is None and value <= t:
                found[i] = k
        return all(f is not None for f in found)

    if targets:
        solve = solvers.fista if method == "fista" else solvers.ista
        solve(problem, x, max_iter=max_iter, tol=0.0, dtype=torch.float64, callback=record)
    return found
