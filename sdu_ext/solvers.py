"""Batched LASSO solvers on the fused ops: ISTA, FISTA and a fast certified solver.

All solvers minimise, for every row b of ``x`` independently,

    f(y; x_b) = 1/2 ||x_b - D y||^2 + alpha ||y||_1

for a :class:`~sdu_ext.problems.Lasso` ``problem`` (dictionary ``D`` (n, m), weight
``alpha``). Signals ``x`` are (B, n), codes (B, m). They work on any device (the
tensors' device; CUDA included) and iterate on the Gram matrix ``G = D^T D`` and
the correlations ``c = x D`` computed once, so an iteration costs one (B, m) x (m, m)
product. Every solver returns a :class:`LassoResult` whose ``gap`` is the duality
gap of the returned codes computed in float64 (see :meth:`Lasso.duality_gap`):
``f(codes) - f(y*) <= gap``.

- :func:`ista` and :func:`fista` are the textbook methods (step ``1 / Lip``), the
  reference methods of the unrolled-network literature; they stop on a relative
  change of the iterates.
- :func:`solve_lasso` is the fast solver: it stops only once every signal's duality
  gap is certified below ``tol`` times its objective.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from . import ops
from .checks import check_finite_tensor, is_int, is_plain_real

__all__ = ["LassoResult", "ista", "fista", "solve_lasso"]

# With ``progress=None`` the bar appears only once a solve has run this long (s).
_PROGRESS_DELAY = 5.0
# Step of the fast solver in units of 1/L. Proximal gradient converges for steps below
# 2/L; the iterates live on a sparse support where the restricted curvature is well
# below L, and the adaptive restart drops the momentum whenever a long step turns
# against it, so 1.5/L cuts the iteration count by about a quarter (measured on
# Gaussian dictionaries; the variable-metric steps of coherent ones stay at 1/Lc,
# where the longer step measured slower).
_STEP_SCALE = 1.5
# The restart test costs two passes over the batch; testing every other step keeps
# its effect at a fraction of the cost.
_RESTART_EVERY = 2


@dataclass
class LassoResult:
    """Outcome of a batched LASSO solve.

    Attributes:
        codes: (B, m) solution, in the solver's dtype, on the device of ``x``.
        iterations: (B,) int64, the iteration at which each signal stopped (for
            :func:`solve_lasso`: the number of gradient steps it took part in).
        converged: (B,) bool, the signal met the stopping rule before ``max_iter``.
        gap: (B,) float64, duality gap of ``codes`` (an upper bound on f(codes) - f(y*)).
        objective: (B,) float64, f(codes).
    """

    codes: torch.Tensor
    iterations: torch.Tensor
    converged: torch.Tensor
    gap: torch.Tensor
    objective: torch.Tensor

    @property
    def n_iter(self):
        """Largest per-signal iteration count (0 for an empty batch)."""
        return int(self.iterations.max()) if self.iterations.numel() else 0

    @property
    def relative_gap(self):
        """(B,) float64 gap / objective (0 where both vanish)."""
        return self.gap / self.objective.clamp_min(torch.finfo(torch.float64).tiny)


# ------------------------------------------------------------------------ helpers

def _check_problem(problem, x):
    D = getattr(problem, "D", None)
    if not isinstance(D, torch.Tensor) or not hasattr(problem, "alpha"):
        raise ValueError(f"problem: expected a sdu_ext.problems.Lasso, got {type(problem).__name__}")
    if not isinstance(x, torch.Tensor) or x.dim() != 2 or x.shape[1] != D.shape[0]:
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x: expected shape (B, {D.shape[0]}) = (B, n), got {got}")
    if not x.is_floating_point():
        raise ValueError(f"x: expected a floating dtype, got {x.dtype}")
    if x.device != D.device:
        raise ValueError(f"x: expected device {D.device} (same as problem.D), got {x.device}")
    check_finite_tensor(x, "x")


def _check_common(max_iter, tol, y0, x, m, dtype):
    if not (is_int(max_iter) and max_iter >= 0):
        raise ValueError(f"max_iter: expected an integer >= 0, got {max_iter!r}")
    if not (is_plain_real(tol) and math.isfinite(tol) and tol >= 0):
        raise ValueError(f"tol: expected a finite value >= 0, got {tol!r}")
    if dtype is not None and dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype: expected torch.float32 or torch.float64, got {dtype}")
    if y0 is not None and (not isinstance(y0, torch.Tensor) or tuple(y0.shape) != (x.shape[0], m)):
        got = tuple(y0.shape) if isinstance(y0, torch.Tensor) else type(y0).__name__
        raise ValueError(f"y0: expected shape ({x.shape[0]}, {m}) = (B, m), got {got}")
    if y0 is not None:
        if not y0.is_floating_point():
            raise ValueError(f"y0: expected a floating dtype, got {y0.dtype}")
        check_finite_tensor(y0, "y0")


def _progress(progress, total, desc):
    delay = _PROGRESS_DELAY if progress is None else 0.0
    return tqdm(total=total, desc=desc, disable=progress is False, delay=delay, leave=False,
                dynamic_ncols=True)


def _gram_gap(y, g, c, xx, alpha):
    """Duality gap and objective from Gram quantities, per row, in the inputs' dtype.

    y (B, m) codes, g = c - y G = D^T (x - D y) (B, m), c = x D (B, m), xx = ||x||^2 (B,).
    Uses ||x - D y||^2 = xx - y.c - y.g and the dual point s (x - D y) with
    s = min(1, alpha / ||g||_inf), exactly as :meth:`Lasso.duality_gap`.
    """
    yc = torch.linalg.vecdot(y, c)
    rr = (xx - yc - torch.linalg.vecdot(y, g)).clamp_min(0)
    xr = xx - yc
    corr = g.abs().amax(-1) if g.shape[-1] else torch.zeros_like(xx)
    s = torch.where(corr > alpha, alpha / corr.clamp_min(1e-300), torch.ones_like(corr))
    primal = 0.5 * rr + alpha * torch.linalg.vector_norm(y, 1, dim=-1)
    # dual(s r) = 1/2 xx - 1/2 ||x - s r||^2 = s x.r - 1/2 s^2 ||r||^2
    dual = s * xr - 0.5 * s * s * rr
    return (primal - dual).clamp_min(0), primal


def _lipschitz(problem, G):
    """Largest eigenvalue of G = D^T D: the problem's cached value when it has one,
    else from a float64 symmetric eigensolver on G (m x m)."""
    cached = getattr(problem, "_lipschitz", None)
    if cached is not None:
        return float(cached)
    return float(torch.linalg.eigvalsh(G.double())[-1]) if G.shape[0] else 0.0


class _Classic:
    """Shared driver of ISTA / FISTA: per-signal stopping and freezing, progress bar."""

    def __init__(self, problem, x, y0, dtype, max_iter, tol, step, progress, name, callback=None):
        _check_problem(problem, x)
        if callback is not None and not callable(callback):
            raise ValueError(f"callback: expected a callable or None, got {type(callback).__name__}")
        self.callback = callback
        m = problem.D.shape[1]
        _check_common(max_iter, tol, y0, x, m, dtype)
        if step is not None and not (is_plain_real(step) and step > 0 and math.isfinite(step)):
            raise ValueError(f"step: expected a positive finite value, got {step!r}")
        self.dtype = dtype or (problem.D.dtype if problem.D.dtype in (torch.float32, torch.float64)
                               else torch.float32)
        D = problem.D.to(self.dtype)
        self.G = D.T @ D
        self.c = x.to(self.dtype) @ D
        self.alpha = problem.alpha
        if step is None:
            lip = _lipschitz(problem, self.G)
            step = 1.0 / lip if lip > 0 else 1.0
        self.step = float(step)
        self.problem, self.x, self.max_iter, self.tol = problem, x, max_iter, tol
        B = x.shape[0]
        self.y = (torch.zeros(B, m, dtype=self.dtype, device=x.device) if y0 is None
                  else y0.to(device=x.device, dtype=self.dtype).clone())
        self.iters = torch.full((B,), max_iter, dtype=torch.int64, device=x.device)
        self.conv = torch.zeros(B, dtype=torch.bool, device=x.device)
        self.bar = _progress(progress, max_iter, name)

    def result(self):
        self.bar.close()
        gap = self.problem.duality_gap(self.y, self.x)
        y, x, D = self.y.double(), self.x.double(), self.problem.D.double()
        obj = 0.5 * (x - y @ D.T).pow(2).sum(-1) + self.alpha * y.abs().sum(-1)
        return LassoResult(self.y, self.iters, self.conv, gap, obj)


# --------------------------------------------------------------------- ISTA / FISTA

_STOP_DOC = """
    Stopping rule (per signal b, tested after every iteration k >= 1): signal b stops
    at the first k with ``||y_k - y_{k-1}||_2 <= tol * ||y_k||_2``; its code is frozen
    from then on, ``iterations[b] = k`` and ``converged[b] = True``. Signals that never
    meet it run ``max_iter`` iterations (``converged`` False). ``tol=0`` runs exactly
    ``max_iter`` iterations for every signal (the research setting: 3000 ISTA steps).
    A small relative change is not a certificate: read ``result.gap`` (float64 duality
    gap) or use :func:`solve_lasso` for a guaranteed accuracy.

    Args:
        problem: :class:`~sdu_ext.problems.Lasso`.
        x: (B, n) finite signals on problem.D's device (NaN or infinite entries raise ValueError).
        y0: optional (B, m) finite initial codes (default zeros).
        max_iter: iteration budget (>= 0).
        tol: relative-change tolerance (>= 0).
        step: gradient step (default ``1 / problem.lipschitz``).
        dtype: iteration dtype, torch.float32 or torch.float64 (default D's dtype).
        progress: tqdm bar: True / False, or None = only for long solves.
        callback: optional ``callback(k, rows, codes) -> bool`` called after every
            iteration k with the indices (R,) of the signals still iterating and their
            codes (R, m) (read-only; every signal when ``tol=0``); returning True stops
            the solve (``iterations`` keeps ``max_iter`` for signals that did not stop).
    Returns:
        :class:`LassoResult` (codes in ``dtype``; gap and objective in float64).
"""


def _run_classic(solver, accelerated, restart):
    y = solver.y
    B = y.shape[0]
    idx = torch.arange(B, device=y.device)  # rows of the full batch still iterating
    ya, ca = y.clone(), solver.c
    za = ya.clone()
    t = torch.ones(B, 1, dtype=ya.dtype, device=ya.device)
    theta = torch.tensor(solver.step * solver.alpha, dtype=ya.dtype, device=ya.device)
    step, tol = solver.step, solver.tol
    M = torch.eye(solver.G.shape[0], dtype=ya.dtype, device=ya.device) - step * solver.G
    sca = step * ca
    for k in range(1, solver.max_iter + 1):
        if idx.numel() == 0:
            break
        point = za if accelerated else ya
        # y - step * (y G - c) = step * c + y (I - step G): one fused GEMM, then the
        # fused soft-threshold in place
        v = ops.soft_threshold_(torch.addmm(sca, point, M), theta)
        d = v - ya
        if accelerated:
            if restart:
                reset = ((point - v) * d).sum(-1, keepdim=True) > 0
                t = torch.where(reset, torch.ones_like(t), t)
            t_next = 0.5 * (1 + torch.sqrt(1 + 4 * t * t))
            za = v + ((t - 1) / t_next) * d
            t = t_next
        num = torch.linalg.vector_norm(d, dim=-1)
        den = torch.linalg.vector_norm(v, dim=-1)
        ya = v
        solver.bar.update(1)
        if solver.callback is not None and solver.callback(k, idx, ya):
            break
        if tol > 0:
            done = num <= tol * den
            if bool(done.any()):
                rows = idx[done]
                solver.y[rows] = ya[done]
                solver.iters[rows] = k
                solver.conv[rows] = True
                keep = ~done
                idx, ya, sca, t = idx[keep], ya[keep], sca[keep], t[keep]
                if accelerated:
                    za = za[keep]
    solver.y[idx] = ya
    return solver.result()


def ista(problem, x, *, y0=None, max_iter=1000, tol=1e-6, step=None, dtype=None, progress=None, callback=None):
    """Batched ISTA (proximal gradient): ``y <- soft(y - step * D^T (D y - x), step * alpha)``.
    """
    solver = _Classic(problem, x, y0, dtype, max_iter, tol, step, progress, "ista", callback)
    return _run_classic(solver, accelerated=False, restart=False)


def fista(problem, x, *, y0=None, max_iter=1000, tol=1e-6, step=None, restart=False, dtype=None,
          progress=None, callback=None):
    """Batched FISTA (Beck & Teboulle) with optional per-signal adaptive restart.

    ``restart=True`` resets a signal's momentum whenever the step turns against it
    (``(z_k - y_{k+1}) . (y_{k+1} - y_k) > 0``, O'Donoghue & Candes), which makes
    FISTA linearly convergent on the well-conditioned problems it usually meets.
    """
    solver = _Classic(problem, x, y0, dtype, max_iter, tol, step, progress, "fista", callback)
    return _run_classic(solver, accelerated=True, restart=restart)


ista.__doc__ += _STOP_DOC
fista.__doc__ += _STOP_DOC


# ------------------------------------------------------------------ fast solver

def _fast_matmul_dtype(device):
    """bfloat16 where the hardware multiplies it natively (CPU AMX, CUDA sm80+), else float32."""
    try:
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.get_device_capability(device)[0] >= 8 else torch.float32
        if device.type == "cpu" and torch.cpu._is_amx_tile_supported():
            return torch.bfloat16
    except (AttributeError, RuntimeError):
        pass
    return torch.float32


class _Geometry:
    """Step size, metric and the matrices the fast iterations multiply by.

    Plain case: the step is 1/L with L = lambda_max(G). Coherent dictionaries (one
    eigenvalue of G far above the rest, e.g. D with positive entries, whose
    columns share a large mean) get the variable metric H = Lc I + (l1 - Lc) v v^T
    (v the top eigenvector, l1 its eigenvalue, Lc the second eigenvalue), which
    majorises G and turns a step of 1/l1 into one of 1/Lc in every other direction;
    the proximal step in that metric reduces to a scalar monotone root (see
    _prox_metric). Detection: block power iteration on G, metric when the top Ritz
    value exceeds 8 times the second.
    """

    def __init__(self, problem, G, lo):
        m = G.shape[0]
        eye = torch.eye(m, dtype=torch.float64, device=G.device)
        self.G64 = G
        self.G32 = G.to(torch.float32)
        self.lo = lo
        self.v = None
        ritz = _top_ritz(self.G32, 4) if m > 4 else None
        if ritz is not None and ritz[0] > 8 * ritz[1]:
            evals, evecs = torch.linalg.eigh(G)
            l1, l2 = float(evals[-1]), float(evals[-2])
            v = evecs[:, -1]
            # lambda_max(G - l1 v v^T) = l2 up to the eigensolver's rounding
            lc = l2 * (1 + 1e-6) + 1e-12 * l1
            self.v, self.l1, self.lc = v, l1, lc
            Gperp = G - l1 * torch.outer(v, v)
            self.step = 1.0 / lc
            self.M = (eye - Gperp * self.step).to(lo)
        else:
            if ritz is None or getattr(problem, "_lipschitz", None) is not None:
                lip = _lipschitz(problem, G)
            else:
                # the block power iteration's top Ritz value is a lower bound that is
                # within a fraction of a percent here; the margin keeps the step safe
                lip = ritz[0] * 1.02
            self.step = _STEP_SCALE / lip if lip > 0 else 1.0
            self.M = (eye - G * self.step).to(lo)


def _top_ritz(G, k, iters=40):
    """The two largest Ritz values of symmetric G from block power iteration (k vectors)."""
    gen = torch.Generator(device="cpu").manual_seed(0)
    V = torch.randn(G.shape[0], k, generator=gen, dtype=G.dtype).to(G.device)
    for _ in range(iters):
        V, _ = torch.linalg.qr(G @ V)
    ritz = torch.linalg.eigvalsh(V.T @ G @ V)
    return float(ritz[-1]), float(ritz[-2])


def _prox_metric(geom, base, shift_a, theta, sigma):
    """The proximal step in the metric H = Lc I + (l1 - Lc) v v^T.

    Returns u = soft(base - sigma v, theta) where sigma solves the scalar equation
    h(sigma) = sigma - shift_a - b v.u(sigma) = 0, b = (l1 - Lc) / Lc; h is piecewise
    linear and increasing, solved per row by Newton steps inside a shrinking bracket
    (exact once the bracket holds a single linear piece). ``sigma`` (R,) is the warm
    start and is updated in place.
    """
    v = geom.v.to(base.dtype)
    v2 = v * v
    b = (geom.l1 - geom.lc) / geom.lc
    lo = torch.full_like(sigma, -math.inf)
    hi = torch.full_like(sigma, math.inf)
    eps = 64 * torch.finfo(base.dtype).eps
    for _ in range(60):
        u = ops.soft_threshold_(base - sigma[:, None] * v, theta)
        vu = u @ v
        h = sigma - shift_a - b * vu
        # stop at the rounding level of the terms of h
        if bool((h.abs() <= eps * (sigma.abs() + shift_a.abs() + b * vu.abs() + 1)).all()):
            break
        dh = 1 + b * ((u != 0).to(u.dtype) @ v2)
        lo = torch.where(h < 0, torch.maximum(lo, sigma), lo)
        hi = torch.where(h > 0, torch.minimum(hi, sigma), hi)
        nxt = sigma - h / dh
        bracketed = torch.isfinite(lo) & torch.isfinite(hi)
        outside = (nxt <= lo) | (nxt >= hi)
        nxt = torch.where(outside & bracketed, 0.5 * (lo + hi), nxt)
        sigma.copy_(torch.where(h == 0, sigma, nxt))
    return u


def _phase(geom, alpha, c, xx, y, g, *, polish, tol, budget, T, bar):
    """Restarted FISTA on the rows of ``y`` (R, m) float64 with gradient ``g`` (R, m)
    float64 at ``y`` (= c - y G; exact in the polish phase).

    The gradient is anchored: every iterate's gradient is the anchor's gradient
    minus (z - anchor) G with the difference multiplied in ``geom.lo`` precision,
    so the cheap low-precision product only ever sees a displacement and its
    rounding shrinks with the steps; every T steps the anchor moves to the current
    iterate with a float32 product of the displacement.

    Bulk (polish=False): float32 state; a row leaves once its estimated relative
    gap is below ``tol`` or stops improving. Polish (polish=True): float64 state;
    a row leaves once its gap, recomputed from an exact float64 gradient, is <= tol.
    Returns (y (R, m) f64, gap (R,) f64 (inf where not certified), objective (R,) f64,
    certified (R,) bool, iterations (R,) int64); at most ``budget`` steps per row.
    """
    sd = torch.float64 if polish else torch.float32
    R, m = y.shape
    dev = y.device
    out_y = y.clone()
    out_gap = torch.full((R,), math.inf, dtype=torch.float64, device=dev)
    out_obj = torch.full((R,), math.inf, dtype=torch.float64, device=dev)
    certified = torch.zeros(R, dtype=torch.bool, device=dev)
    iters = torch.zeros(R, dtype=torch.int64, device=dev)
    rows = torch.arange(R, device=dev)
    step = geom.step
    theta = torch.tensor(step * alpha, dtype=sd, device=dev)
    Y = y.to(sd)
    Z = Y.clone()
    zr = Y.clone()
    gr = g.to(sd)
    A = zr + step * gr
    t = torch.ones(R, 1, dtype=sd, device=dev)
    sigma = torch.zeros(R, dtype=sd, device=dev)
    cr, xxr = c.to(sd), xx.to(sd)
    best = torch.full((R,), math.inf, dtype=sd, device=dev)
    stall = torch.zeros(R, dtype=torch.int64, device=dev)
    # work buffers, reused every step (fresh allocations cost page faults on CPU)
    new, d, tmp = (torch.empty_like(Y) for _ in range(3))
    dz = torch.empty(R, m, dtype=geom.lo, device=dev)
    if geom.v is not None:
        vv = geom.v.to(sd)
        ratio, coupling = geom.l1 / geom.lc, (geom.l1 - geom.lc) / geom.lc
    done_iters = 0
    while rows.numel() and done_iters < budget:
        n_steps = min(T, budget - done_iters)
        for k in range(n_steps):
            torch.sub(Z, zr, out=tmp)
            dz.copy_(tmp)
            new.copy_(torch.mm(dz, geom.M)).add_(A)
            if geom.v is None:
                ops.soft_threshold_(new, theta)
            else:
                shift = ratio * (tmp @ vv) - coupling * (Z @ vv)
                new.copy_(_prox_metric(geom, new, shift, theta, sigma))
            torch.sub(new, Y, out=d)
            if k % _RESTART_EVERY == 0:
                # adaptive restart: the momentum is dropped when the step turns against
                # it, (z - y_new)^T H (y_new - y) > 0 in the metric H of the step
                torch.sub(Z, new, out=tmp)
                inner = torch.linalg.vecdot(tmp, d)
                if geom.v is not None:
                    inner = inner + coupling * (tmp @ vv) * (d @ vv)
                t = torch.where(inner[:, None] > 0, torch.ones_like(t), t)
            t_next = 0.5 * (1 + torch.sqrt(1 + 4 * t * t))
            torch.addcmul(new, d, (t - 1) / t_next, out=Z)
            t = t_next
            Y, new = new, Y
        done_iters += n_steps
        iters[rows] += n_steps
        bar.update(n_steps)
        # re-anchor at Y (float32 product of the displacement)
        torch.sub(Y, zr, out=tmp)
        gr -= (tmp.to(torch.float32) @ geom.G32).to(sd)
        zr.copy_(Y)
        gap, obj = _gram_gap(Y, gr, cr, xxr, alpha)
        est = gap / obj.clamp_min(1e-300)
        if polish:
            cand = (est <= tol).nonzero().squeeze(1)
            leave = torch.zeros_like(est, dtype=torch.bool)
            if cand.numel():
                # exact float64 gradient of the candidates: the certificate
                Yc = Y[cand]
                ge = c[rows[cand]] - Yc @ geom.G64
                gap_e, obj_e = _gram_gap(Yc, ge, cr[cand], xxr[cand], alpha)
                ok = gap_e <= tol * obj_e
                gr[cand] = ge  # failed candidates continue from an exact anchor
                sel = rows[cand[ok]]
                out_y[sel], out_gap[sel], out_obj[sel] = Yc[ok], gap_e[ok], obj_e[ok]
                certified[sel] = True
                leave[cand[ok]] = True
        else:
            improved = est < 0.5 * best
            best = torch.where(improved, est, torch.minimum(best, est))
            stall = torch.where(improved, torch.zeros_like(stall), stall + 1)
            leave = (est <= tol) | (stall >= 3)
            out_y[rows[leave]] = Y[leave].to(torch.float64)
        torch.add(zr, gr, alpha=step, out=A)
        if bool(leave.any()):
            keep = ~leave
            rows, Y, Z, zr, gr, A, t, sigma, cr, xxr, best, stall = (
                a[keep] for a in (rows, Y, Z, zr, gr, A, t, sigma, cr, xxr, best, stall))
            new, d, tmp, dz = (b[: rows.numel()] for b in (new, d, tmp, dz))
    if rows.numel():
        out_y[rows] = Y.to(torch.float64)
    return out_y, out_gap, out_obj, certified, iters


def solve_lasso(problem, x, *, tol=1e-6, y0=None, max_iter=20000, dtype=torch.float64,
                matmul_dtype=None, progress=None):
    """Fast batched LASSO with a certified accuracy for every signal.

    Returns codes whose float64 duality gap is at most ``tol`` times their objective,
    signal by signal: ``gap_b <= tol * f(codes_b; x_b)``, hence
    ``f(codes_b) - f(y*_b) <= tol * f(codes_b)``. The gap is the one of
    :meth:`Lasso.duality_gap` (dual point ``s (x - D y)`` scaled to feasibility),
    evaluated from an exact float64 gradient ``D^T (x - D y)`` of the returned codes.

    Method: restarted FISTA on the Gram matrix with anchored gradients — the
    iterations multiply only displacements from an anchor, in ``matmul_dtype``
    (bfloat16 where the hardware has native bfloat16 products, else float32), the
    anchors are refreshed in float32 and a float64 product certifies each signal at
    the end; iterations run in float32 until a signal's estimated gap stops
    improving, then in float64. Signals leave the batch as soon as they are
    certified. Dictionaries with one dominant Gram eigenvalue (positive-entry
    dictionaries such as the `patches` problem's) are handled in a rank-one variable
    metric (see ``_Geometry``). CPU and CUDA.

    Args:
        problem: :class:`~sdu_ext.problems.Lasso`.
        x: (B, n) finite signals, any floating dtype, on problem.D's device.
        tol: relative duality-gap target (> 0).
        y0: optional (B, m) finite warm start.
        max_iter: budget of gradient steps per signal and phase (float32, then
            float64); signals not certified within it come back with ``converged``
            False and their true gap.
        dtype: dtype of the returned codes (float64 default; float32 rounds the
            certified codes, and ``gap`` is then recomputed for the rounded codes).
        matmul_dtype: override of the iteration product precision.
        progress: tqdm bar (True / False / None = for long solves).
    Returns:
        :class:`LassoResult`; ``iterations`` counts each signal's gradient steps.
    """
    _check_problem(problem, x)
    D = problem.D
    n, m = D.shape
    _check_common(max_iter, tol, y0, x, m, dtype)
    if not tol > 0:
        raise ValueError(f"tol: expected a value > 0, got {tol!r}")
    if matmul_dtype not in (None, torch.bfloat16, torch.float16, torch.float32, torch.float64):
        raise ValueError(f"matmul_dtype: expected None or a floating dtype, got {matmul_dtype!r}")
    dev = x.device
    B = x.shape[0]
    alpha = problem.alpha
    D64 = D.to(torch.float64)
    x64 = x.to(torch.float64)
    G = D64.T @ D64
    c = x64 @ D64
    xx = (x64 * x64).sum(-1)
    lo = matmul_dtype or _fast_matmul_dtype(dev)
    dtype = dtype or torch.float64
    y = (torch.zeros(B, m, dtype=torch.float64, device=dev) if y0 is None
         else y0.to(dev, torch.float64).clone())
    g = c.clone() if y0 is None else c - y @ G
    bar = _progress(progress, max_iter, "solve_lasso")
    if B == 0 or m == 0:
        gap, obj = _gram_gap(y, g, c, xx, alpha)
        bar.close()
        return LassoResult(y.to(dtype), torch.zeros(B, dtype=torch.int64, device=dev),
                           torch.ones(B, dtype=torch.bool, device=dev), gap, obj)
    geom = _Geometry(problem, G, lo)
    # rows that are already optimal (e.g. y* = 0 when alpha >= ||D^T x||_inf) need no step
    gap, obj = _gram_gap(y, g, c, xx, alpha)
    start_ok = gap <= tol * obj
    iters = torch.zeros(B, dtype=torch.int64, device=dev)
    rest = (~start_ok).nonzero().squeeze(1)
    final_gap, final_obj, conv = gap.clone(), obj.clone(), start_ok.clone()
    if rest.numel():
        yb, _, _, _, it_b = _phase(geom, alpha, c[rest], xx[rest], y[rest], g[rest], polish=False,
                                   tol=max(tol, 1e-5), budget=max_iter, T=10, bar=bar)
        gb = c[rest] - yb @ G
        yp, gp, op, cp, it_p = _phase(geom, alpha, c[rest], xx[rest], yb, gb, polish=True, tol=tol,
                                      budget=max_iter, T=5, bar=bar)
        # signals the budget stopped: report their true gap
        if bool((~cp).any()):
            miss = ~cp
            ge = c[rest][miss] - yp[miss] @ G
            gp[miss], op[miss] = _gram_gap(yp[miss], ge, c[rest][miss], xx[rest][miss], alpha)
        y[rest], final_gap[rest], final_obj[rest], conv[rest] = yp, gp, op, cp
        iters[rest] = it_b + it_p
    bar.close()
    codes = y.to(dtype)
    if dtype != torch.float64:
        final_gap, final_obj = _gram_gap(codes.double(), c - codes.double() @ G, c, xx, alpha)
        conv = conv & (final_gap <= tol * final_obj)
    return LassoResult(codes, iters, conv, final_gap, final_obj)
