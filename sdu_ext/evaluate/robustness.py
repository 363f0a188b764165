"""Robustness protocol of SPEC section 6: the perturbation sweep and the OOD shift.

Perturbation sweep (a, c): for each sigma the network starts from y_0 ~ N(0, sigma^2 I)
and, after every layer but the last, gets the research noise
``sigma * log ||D^T (D y - xs)|| * N(0, I)`` (:class:`~sdu_ext.models.LogGradientNoise`).

The noise domain. The research code defines both in its scaled domain, where signals
and codes are multiplied by 100 (``paper`` LISTA). The perturbation must not depend on
how a network is parametrised, so every model here is perturbed in one *reference
domain* of scale ``domain_scale`` (default 100, the research calibration): y_0 is drawn
there and divided by it, and the noise hook runs on ``y * k``, ``xs * k`` with
``k = domain_scale / model.scale`` and its output is divided by k
(:class:`~sdu_ext.models.noise.RescaledNoise`). For ``paper`` LISTA k = 1 and this is the research rule
exactly (its default initial point is the sigma = 1 draw); for ``ista`` LISTA (scale 1)
it is the same physical perturbation. In the unscaled domain, sigma = 1 then adds about
``0.01 * log(100 ||grad g||)`` per coordinate.

OOD shift (b): ``x~ = clip(x + p N(0, I), lo, hi)`` and the network is scored against the
optimum ``y~*`` of the *shifted* signals (the research plot used the old optimum: a bug,
reported here separately as ``*_old`` for comparison).

Random draws come from ``torch.Generator`` objects seeded from ``seed`` and the index
of the sigma (or p), so every model sees the same draws: the comparison is paired.
"""
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch
from torch import nn

from .. import ops
from ..checks import check_count, check_tensor
from ..models.noise import RescaledNoise, log_gradient_noise
from .metrics import layer_metrics, nmse_db, run_iterates

__all__ = ["RescaledNoise", "log_gradient_noise", "seeded_generator", "perturbed_iterates", "layer_descending",
           "perturbation_sweep", "shift_signals", "shifted_data", "ood_shift"]

try:
    from tqdm.auto import tqdm
except ImportError:  # pragma: no cover - tqdm is a dependency
    tqdm = None


def seeded_generator(seed: int, index: int, device="cpu") -> torch.Generator:
    """The generator of draw number ``index`` of a protocol seeded by ``seed``
    (``seed * 1000003 + index``): every model sees the same draws."""
    return torch.Generator(device=device).manual_seed(int(seed) * 1_000_003 + int(index))


def _bar(items, desc, progress):
    if progress and tqdm is not None:
        return tqdm(items, desc=desc, leave=False, dynamic_ncols=True)
    return items


def _summary(metrics):
    """The final-layer numbers of a :func:`layer_metrics` dict."""
    return {"final_distance_mean": metrics["distance_mean"][-1],
            "final_distance_std": metrics["distance_std"][-1],
            "final_nmse_db": metrics["nmse_db"][-1],
            "final_l1_mean": metrics["l1_mean"][-1]}


def _collect(rows, key_name, keys):
    out = {key_name: list(keys)}
    for row in rows:
        for k, v in row.items():
            out.setdefault(k, []).append(v)
    return out


@torch.no_grad()
def perturbed_iterates(model: nn.Module, x: torch.Tensor, sigma: float, generator: torch.Generator,
                       negative: str = "clamp", domain_scale: float = 100.0, batch_size: int = 1024,
                       return_outputs: bool = False):
    """Iterates (L+1, N, m) of ``model`` on ``x`` (N, n) from ``y_0 ~ N(0, sigma^2 I)`` with
    the log-gradient noise between layers, both in the reference domain of scale
    ``domain_scale`` (module docstring); every draw comes from ``generator`` (a CPU
    generator reproduces across devices).

    ``iterates[l]`` is layer l's output *after* its noise (where layer l+1 starts). With
    ``return_outputs`` also returns the layer outputs *before* the noise (L, N, m)
    (the last one equals ``iterates[L]``: no noise follows the last layer). ``batch_size``: an
    integer >= 1.
    """
    check_tensor(x, "x", "a tensor (N, n)", dims=2)
    batch_size = check_count(batch_size, "batch_size")
    model.eval()
    D = model.D
    y0 = (sigma / domain_scale) * torch.randn(x.shape[0], model.m, generator=generator, dtype=D.dtype).to(D.device)
    noise = log_gradient_noise(model, sigma, negative, domain_scale, generator)
    its, outs = [], []
    for start in range(0, x.shape[0], batch_size):
        sl = slice(start, start + batch_size)
        clean = []

        def hook(layer, y, xs):
            clean.append(y)
            return noise(layer, y, xs)

        it = model(x[sl], return_all=True, noise=hook, y0=y0[sl])
        its.append(it)
        if return_outputs:
            pre = torch.stack(clean) / model.scale if clean else it[:0]
            outs.append(torch.cat([pre.to(it.dtype), it[-1:]]))
    iterates = torch.cat(its, dim=1)
    return (iterates, torch.cat(outs, dim=1)) if return_outputs else iterates


def layer_descending(iterates: torch.Tensor, outputs: torch.Tensor, y_star: torch.Tensor) -> torch.Tensor:
    """Fraction of samples (per layer, (L,) float64) whose layer output before the noise,
    ``outputs[l-1]``, is closer to y* than the layer's (perturbed) input ``iterates[l-1]``:
    whether each layer itself descends from a perturbed point."""
    check_tensor(iterates, "iterates", "stacked iterates (L+1, N, m)", dims=3)
    check_tensor(outputs, "outputs", "layer outputs (L, N, m)", dims=3)
    check_tensor(y_star, "y_star", "a tensor (N, m)", dims=2)
    before = ops.residual_norms(iterates[:-1], y_star)
    after = ops.residual_norms(outputs, y_star)
    return (after < before).to(torch.float64).mean(dim=1)


def perturbation_sweep(model: nn.Module, x: torch.Tensor, y_star: torch.Tensor, sigmas: Sequence[float], *,
                       seed: int = 0, negative: str = "clamp", domain_scale: float = 100.0, batch_size: int = 1024,
                       progress: bool = False) -> Dict[str, list]:
    """The perturbation sweep (SPEC section 6 (a) and (c)) of one model.

    Args:
        model: an unrolled model; x (N, n) signals; y_star (N, m) their optima.
        sigmas: noise levels (the initial point's std and the factor on the per-layer noise).
        seed: seeds the draws of sigma number i with ``seed * 1000003 + i``.
        negative: how :class:`~sdu_ext.models.LogGradientNoise` treats a negative log-norm.
        domain_scale: scale of the domain sigma refers to (module docstring).
    Returns a JSON-ready dict of lists, one entry per sigma: ``sigma``,
    ``final_distance_mean``/``_std`` (||y_L - y*||), ``final_nmse_db``, ``final_l1_mean``
    (||y_L||_1), ``distance_mean`` (per layer, L+1), ``descending`` (per layer, L: the
    descending frequency of the perturbed iterates, the quantity the constraints of a
    noisy training run bound: r_l after layer l's noise against r_(l-1) after layer
    l-1's) and ``layer_descending`` (per layer, L: :func:`layer_descending`, whether the
    layer itself moves its perturbed input towards y*).
    """
    check_tensor(x, "x", "a tensor (N, n)", dims=2)
    check_tensor(y_star, "y_star", "a tensor (N, m)", dims=2)
    batch_size = check_count(batch_size, "batch_size")
    rows = []
    for i, sigma in enumerate(_bar(list(sigmas), "perturbation sweep", progress)):
        it, out = perturbed_iterates(model, x, float(sigma), seeded_generator(seed, i), negative, domain_scale,
                                     batch_size, return_outputs=True)
        m = layer_metrics(it, x, y_star, model.problem)
        rows.append({**_summary(m), "distance_mean": m["distance_mean"], "descending": m["descending"],
                     "layer_descending": layer_descending(it, out, y_star).tolist()})
    return _collect(rows, "sigma", [float(s) for s in sigmas])


def shift_signals(x: torch.Tensor, p: float, generator: torch.Generator, clip: Optional[tuple] = (0.0, 1.0)
                  ) -> torch.Tensor:
    """``x~ = clip(x + p N(0, I), lo, hi)`` for x (N, n); ``clip=None`` skips the clipping
    (signals that do not live in [0, 1], such as the synthetic benchmark's)."""
    check_tensor(x, "x", "a tensor (N, n)")
    noise = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
    shifted = x + p * noise
    return shifted if clip is None else shifted.clamp(float(clip[0]), float(clip[1]))


def shifted_data(x: torch.Tensor, solve: Callable, shifts: Sequence[float], *, seed: int = 0,
                 clip: Optional[tuple] = (0.0, 1.0), progress: bool = False) -> List[Dict[str, Any]]:
    """The OOD test sets, computed once and shared by every model.

    ``solve(x (N, n)) -> y* (N, m)`` is the reference LASSO solver. Returns a list of
    ``{"p", "x", "y_star"}`` (shift p number i drawn with ``seed * 1000003 + i``)."""
    check_tensor(x, "x", "a tensor (N, n)")
    out = []
    for i, p in enumerate(_bar(list(shifts), "OOD optima", progress)):
        xs = shift_signals(x, float(p), seeded_generator(seed, i), clip)
        out.append({"p": float(p), "x": xs, "y_star": solve(xs)})
    return out


def ood_shift(model: nn.Module, shifted: List[Dict[str, Any]], y_star_clean: Optional[torch.Tensor] = None, *,
              generator_seed: int = 0, batch_size: int = 1024) -> Dict[str, list]:
    """The OOD shift (SPEC section 6 (b)) of one model on :func:`shifted_data`'s sets.

    Returns a JSON-ready dict of lists, one entry per p: ``p``, ``final_distance_mean``/
    ``_std``, ``final_nmse_db`` (all against the new optimum y~*), ``final_l1_mean``,
    ``reference_l1_mean`` (||y~*||_1), ``distance_mean`` and ``descending`` per layer,
    and, when ``y_star_clean`` is given, ``final_nmse_db_old`` against the clean optimum
    (the research plot's measure). ``generator_seed`` seeds the random initial point of
    ``paper`` LISTA.
    """
    if y_star_clean is not None:
        check_tensor(y_star_clean, "y_star_clean", "a tensor (N, m) or None", dims=2)
    batch_size = check_count(batch_size, "batch_size")
    rows = []
    for i, s in enumerate(shifted):
        it = run_iterates(model, s["x"], generator=seeded_generator(generator_seed, i), batch_size=batch_size)
        m = layer_metrics(it, s["x"], s["y_star"], model.problem)
        row = {**_summary(m), "reference_l1_mean": m["l1_star"], "distance_mean": m["distance_mean"],
               "descending": m["descending"]}
        if y_star_clean is not None:
            row["final_nmse_db_old"] = float(nmse_db(it[-1], y_star_clean))
        rows.append(row)
    return _collect(rows, "p", [s["p"] for s in shifted])
