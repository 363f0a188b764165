"""Evaluation protocol of GLOW-Prox inpainting (SPEC section 5): image metrics and robustness.

Metrics (:func:`layer_metrics`): per layer MSE (whole image and inside the hole), PSNR
(:func:`psnr`) and SSIM (:func:`ssim`, Gaussian window, checked against scikit-image in the
tests), the descending frequencies of both residuals (||grad_x f|| and ||grad_z f||) and of
the error to the clean image. Robustness (:func:`perturbation_sweep`): the clean image plus
``p`` times a random unit-norm direction (clamped to [0, 1]) is masked and reconstructed;
scored against the clean image.

Images are (N, C, H, W) tensors in [0, 1]; the mask is (1, H, W) (1 = observed).
"""
from typing import Dict, List, Optional, Tuple

import torch
from torch import nn
from torch.nn import functional as F

from ..checks import check_count, check_tensor
from ..models.glow_prox import GRAD_X_WEIGHT, UnitDirectionNoise, unit_directions

__all__ = ["psnr", "ssim", "run_iterates", "layer_metrics", "evaluate_clean", "evaluate_under_noise", "perturb",
           "perturbation_sweep"]


def psnr(x: torch.Tensor, reference: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """PSNR in dB per image: ``10 log10(data_range^2 / MSE)`` for x, reference (B, ...) -> (B,)
    (float32 or wider); an MSE of 0 is floored at 1e-12 (120 dB for data_range 1)."""
    check_tensor(x, "x", "a tensor (B, ...)")
    check_tensor(reference, "reference", "a tensor (B, ...)")
    mse = (x - reference).pow(2).flatten(1).mean(dim=1).to(torch.promote_types(x.dtype, torch.float32))
    return 10.0 * torch.log10(data_range ** 2 / mse.clamp_min(1e-12))


def _gaussian_window(sigma, truncate, dtype, device):
    r = int(truncate * sigma + 0.5)
    t = torch.arange(-r, r + 1, dtype=dtype, device=device)
    w = torch.exp(-0.5 * (t / sigma) ** 2)
    return w / w.sum()


def ssim(x: torch.Tensor, reference: torch.Tensor, data_range: float = 1.0, sigma: float = 1.5,
         truncate: float = 3.5, k1: float = 0.01, k2: float = 0.03) -> torch.Tensor:
    """Structural similarity per image (Wang et al. 2004) -> (B,), float32 or wider.

    x, reference: (B, C, H, W). Local statistics with a Gaussian window (std ``sigma``,
    radius ``int(truncate * sigma + 0.5)``: 11 x 11 for the defaults), population
    covariances, constants (k1 R)^2 and (k2 R)^2 with R = ``data_range``; the SSIM map
    is averaged over the positions where the window fits inside the image and over the
    channels. Equals ``skimage.metrics.structural_similarity(..., gaussian_weights=True,
    sigma=1.5, use_sample_covariance=False, data_range=1, channel_axis=0)``.
    """
    check_tensor(x, "x", "a tensor (B, C, H, W)", dims=4)
    check_tensor(reference, "reference", "a tensor (B, C, H, W)")
    if x.shape != reference.shape or x.dim() != 4:
        raise ValueError(f"reference: expected the shape of x (B, C, H, W) = {tuple(x.shape)}, "
                         f"got {tuple(reference.shape)}")
    dtype = torch.promote_types(x.dtype, torch.float32)
    w = _gaussian_window(sigma, truncate, dtype, x.device)
    k = w.numel()
    if min(x.shape[2:]) < k:
        raise ValueError(f"x: expected images of at least {k} x {k} pixels for the SSIM window, "
                         f"got {tuple(x.shape[2:])}")
    C = x.shape[1]
    wr, wc = w.view(1, 1, k, 1).expand(C, 1, k, 1), w.view(1, 1, 1, k).expand(C, 1, 1, k)

    def filt(t):
        return F.conv2d(F.conv2d(t, wr, groups=C), wc, groups=C)

    a, b = x.to(dtype), reference.to(dtype)
    mu_a, mu_b = filt(a), filt(b)
    s_aa = filt(a * a) - mu_a * mu_a
    s_bb = filt(b * b) - mu_b * mu_b
    s_ab = filt(a * b) - mu_a * mu_b
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    s = ((2 * mu_a * mu_b + c1) * (2 * s_ab + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (s_aa + s_bb + c2))
    return s.flatten(1).mean(dim=1)


@torch.no_grad()
def run_iterates(model: nn.Module, y: torch.Tensor, noise=None, batch_size: int = 64
                 ) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(iterates (L+1, N, C, H, W), latents (L+1, N, D))`` of a GLOW-Prox ``model`` on masked
    images ``y`` (N, C, H, W), without gradients, in chunks of ``batch_size`` (an integer >= 1;
    eval mode)."""
    check_tensor(y, "y", "a tensor (N, C, H, W)")
    batch_size = check_count(batch_size, "batch_size")
    model.eval()
    its, lat = [], []
    for i in range(0, y.shape[0], batch_size):
        its.append(model(y[i:i + batch_size], return_all=True, noise=noise))
        lat.append(model.latents)
    return torch.cat(its, dim=1), torch.cat(lat, dim=1)


def _descending(r):
    return (r[1:] < r[:-1]).to(torch.float64).mean(dim=1).tolist()


def _ratios(r):
    m = r.to(torch.float64).mean(dim=1)
    return (m[1:] / m[:-1].clamp_min(1e-12)).tolist()


def _mean_ratios(r):
    r = r.to(torch.float64)
    return (r[1:] / r[:-1].clamp_min(1e-12)).mean(dim=1).tolist()


@torch.no_grad()
def layer_metrics(iterates: torch.Tensor, latents: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
                  mask: torch.Tensor) -> Dict[str, list]:
    """Per-layer metrics of reconstructions.

    iterates (L+1, N, C, H, W), latents (L+1, N, D) from :func:`run_iterates`; x the clean
    images and y the measurements (N, C, H, W); mask (1, H, W). Returns a dict of lists:
    per iterate l = 0..L: ``mse``, ``mse_hole`` (inside the hole), ``psnr`` and ``psnr_std``
    (dB, over images), ``ssim``, ``grad_x`` and ``grad_z`` (mean residual norms); per layer
    l = 1..L: ``desc_x``, ``desc_z`` (fraction of images whose residual decreased),
    ``desc_err`` (fraction whose distance to the clean image decreased), ``ratio_x``,
    ``ratio_z``, ``ratio_err`` (mean r_l / mean r_{l-1}: the ``ratio_of_means`` constraint asks
    <= 1 - eps) and ``mean_ratio_err`` (mean over images of ||x_l - x|| / ||x_(l-1) - x||: the
    ``mean_ratio`` form of the layer-1 group); ``count`` the number of images.
    """
    L1, N = iterates.shape[:2]
    err = (iterates - x).pow(2).flatten(2)
    hole = (1 - mask).expand_as(x[0]).flatten().to(torch.bool)
    rx = torch.linalg.vector_norm((GRAD_X_WEIGHT * mask * (mask * iterates - y)).flatten(2), dim=2)
    rz = torch.linalg.vector_norm(latents, dim=2)
    dist = err.sum(dim=2).sqrt()
    ps = torch.stack([psnr(iterates[l], x) for l in range(L1)])
    ss = torch.stack([ssim(iterates[l], x) for l in range(L1)])
    return {"count": int(N),
            "mse": err.mean(dim=2).mean(dim=1).tolist(),
            "mse_hole": err[:, :, hole].mean(dim=2).mean(dim=1).tolist(),
            "psnr": ps.mean(dim=1).tolist(), "psnr_std": ps.std(dim=1, unbiased=False).tolist(),
            "ssim": ss.mean(dim=1).tolist(),
            "grad_x": rx.mean(dim=1).tolist(), "grad_z": rz.mean(dim=1).tolist(),
            "desc_x": _descending(rx), "desc_z": _descending(rz), "desc_err": _descending(dist),
            "ratio_x": _ratios(rx), "ratio_z": _ratios(rz), "ratio_err": _ratios(dist),
            "mean_ratio_err": _mean_ratios(dist)}


def evaluate_clean(model: nn.Module, data, batch_size: int = 64) -> Dict[str, list]:
    """:func:`layer_metrics` of ``model`` on the clean test set of ``data`` (an
    :class:`~sdu_ext.problems.inpainting.InpaintingData`), plus ``overflows`` (images whose
    Glow inverse overflowed in some layer, see :class:`~sdu_ext.models.GlowProx`)."""
    batch_size = check_count(batch_size, "batch_size")
    y, x = data.pairs("test")
    before = model.overflows
    it, lat = run_iterates(model, y, batch_size=batch_size)
    return dict(layer_metrics(it, lat, x, y, data.mask), overflows=model.overflows - before)


def evaluate_under_noise(model: nn.Module, data, sigma: float, seed: int, batch_size: int = 64) -> Dict[str, list]:
    """:func:`evaluate_clean` with the between-layer noise (:class:`~sdu_ext.models.UnitDirectionNoise`)
    of factor ``sigma``, drawn from a generator seeded by ``seed + 10000``."""
    batch_size = check_count(batch_size, "batch_size")
    noise = UnitDirectionNoise(sigma, generator=torch.Generator().manual_seed(seed + 10_000))
    y, x = data.pairs("test")
    before = model.overflows
    it, lat = run_iterates(model, y, noise, batch_size)
    return dict(layer_metrics(it, lat, x, y, data.mask), sigma=sigma, overflows=model.overflows - before)


def perturb(x: torch.Tensor, p: float, generator: Optional[torch.Generator]) -> torch.Tensor:
    """``clamp(x + p u, 0, 1)`` with u (N, C, H, W) random directions of unit norm per image."""
    check_tensor(x, "x", "a tensor (N, C, H, W)")
    return (x + p * unit_directions(x.shape, generator, x.dtype, x.device)).clamp(0.0, 1.0)


def perturbation_sweep(model: nn.Module, data, ps, seed: int, first_layer: int = 2, batch_size: int = 64
                       ) -> Dict[str, List[float]]:
    """The robustness sweep: for each p in ``ps`` the test images plus p times a random
    unit-norm direction (the same directions for every model: seeded by ``seed`` and the
    index of p), clamped, masked and reconstructed, scored against the clean images.

    Returns ``{"p", "psnr", "ssim", "mse", "psnr_input", "psnr_masked", "min_desc_x",
    "min_desc_z", "min_desc_err", "overflows"}`` (lists over p): final-layer metrics, the PSNR
    of the perturbed image itself and of its masked version (the network's input: what doing
    nothing scores), the lowest descending frequency over layers ``first_layer``..L and the
    Glow-inverse overflows."""
    batch_size = check_count(batch_size, "batch_size")
    x = data.test
    out = {k: [] for k in ("p", "psnr", "ssim", "mse", "psnr_input", "psnr_masked", "min_desc_x", "min_desc_z",
                           "min_desc_err", "overflows")}
    for i, p in enumerate(ps):
        xp = perturb(x, p, torch.Generator().manual_seed(seed * 1000 + i))
        y = data.measure(xp)
        before = model.overflows
        it, lat = run_iterates(model, y, batch_size=batch_size)
        out["overflows"].append(model.overflows - before)
        m = layer_metrics(it, lat, x, y, data.mask)
        k = first_layer - 1
        out["p"].append(p)
        out["psnr"].append(m["psnr"][-1])
        out["ssim"].append(m["ssim"][-1])
        out["mse"].append(m["mse"][-1])
        out["psnr_input"].append(float(psnr(xp, x).mean()))
        out["psnr_masked"].append(m["psnr"][0])
        out["min_desc_x"].append(min(m["desc_x"][k:]))
        out["min_desc_z"].append(min(m["desc_z"][k:]))
        out["min_desc_err"].append(min(m["desc_err"][k:]))
    return out
