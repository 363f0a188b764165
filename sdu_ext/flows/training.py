"""Maximum-likelihood training of a Glow on quantised images (bits per dimension)."""
import math
import numbers
import time

import torch

from .glow import Glow

try:
    from tqdm.auto import tqdm
except ImportError:  # pragma: no cover - tqdm is a dependency
    tqdm = None


def _check_n_bins(n_bins):
    if not isinstance(n_bins, numbers.Integral) or isinstance(n_bins, bool) or n_bins < 1:
        raise ValueError(f"n_bins: expected an integer >= 1, got {n_bins!r}")


def _check_unit_range(x, name):
    lo, hi = float(x.min()), float(x.max())
    if not (lo >= 0.0 and hi <= 1.0):
        raise ValueError(f"{name}: expected values in [0, 1], got min {lo:.4g}, max {hi:.4g}")


def _dequantize(x, n_bins, noise):
    # Quantise to n_bins levels (1.0 falls in the top bin), then place the sample inside its
    # bin: the continuous density times the bin volume n_bins**-D estimates the discrete mass.
    bins = torch.floor(x * n_bins).clamp_(0, n_bins - 1)
    return (bins + noise) / n_bins


def bits_per_dim(glow, x, n_bins=32, *, dequantize=True, generator=None, reduction="none"):
    """Bits per dimension of images ``x`` (B, C, S, S) in [0, 1] quantised to ``n_bins`` levels.

    ``bpd = (-log p(x_deq) + D log n_bins) / (D log 2)`` with D = C*S*S and ``x_deq`` the
    quantised image plus uniform noise inside its bin (``dequantize=True``, noise from
    ``generator``, a CPU ``torch.Generator`` or None for the global RNG) or the bin centre
    (``dequantize=False``, deterministic). n_bins=32 is the 5-bit setting of the research code.
    Returns (B,) in the flow's dtype (``reduction="none"``) or the 0-d mean (``"mean"``).
    Differentiable in the flow's parameters.
    """
    if not isinstance(glow, Glow):
        raise ValueError(f"glow: expected a Glow, got {type(glow).__name__}")
    _check_n_bins(n_bins)
    if reduction not in ("none", "mean"):
        raise ValueError(f"reduction: expected 'none' or 'mean', got {reduction!r}")
    glow._check_x(x)
    _check_unit_range(x, "x")
    if dequantize:
        noise = torch.rand(x.shape, generator=generator, dtype=x.dtype).to(x.device)
    else:
        noise = torch.full_like(x, 0.5)
    dims = x[0].numel()
    log_p = glow.log_prob(_dequantize(x, n_bins, noise))
    bpd = (dims * math.log(n_bins) - log_p) / (dims * math.log(2.0))
    return bpd.mean() if reduction == "mean" else bpd


def train_glow(glow, images, *, epochs, batch_size, lr, seed, n_bins=32, progress=True,
               device="cpu"):
    """Fit ``glow`` by maximum likelihood (mean bits/dim with uniform dequantisation, Adam).

    glow: a :class:`Glow`, moved to ``device`` and trained in place (its dtype is kept).
    images: (N, C, S, S) in [0, 1] matching the flow's config; converted to the flow's dtype.
    epochs (>= 0), batch_size (>= 1), lr (> 0): the optimisation; the last batch of an epoch
    may be smaller. seed: seeds the shuffling and the dequantisation noise (the flow's own
    initialisation is the caller's). ActNorm layers that are not yet initialised initialise
    on the first batch.
    Returns the history: one dict per epoch ``{"epoch": 1-based, "bits_per_dim": the mean
    training bits/dim over the epoch's samples, "seconds": wall time of the epoch}``.
    Raises :class:`sdu_ext.train.NonFiniteError` if the loss becomes NaN/Inf.
    """
    from ..train.finite import NonFiniteError

    if not isinstance(glow, Glow):
        raise ValueError(f"glow: expected a Glow, got {type(glow).__name__}")
    for name, given, low in (("epochs", epochs, 0), ("batch_size", batch_size, 1),
                             ("seed", seed, None)):
        if not isinstance(given, numbers.Integral) or isinstance(given, bool) or \
                (low is not None and given < low):
            bound = f" >= {low}" if low is not None else ""
            raise ValueError(f"{name}: expected an integer{bound}, got {given!r}")
    if not isinstance(lr, numbers.Real) or isinstance(lr, bool) or not (0 < lr < math.inf):
        raise ValueError(f"lr: expected a positive finite number, got {lr!r}")
    _check_n_bins(n_bins)
    glow.to(device)
    p = next(glow.parameters())
    if not isinstance(images, torch.Tensor):
        raise ValueError(f"images: expected a tensor (N, C, S, S), got {type(images).__name__}")
    images = images.detach().to(dtype=p.dtype)
    glow._check_x(images[:1].to(p.device), name="images")
    if images.shape[0] < 1:
        raise ValueError(f"images: expected at least one image, got shape {tuple(images.shape)}")
    _check_unit_range(images, "images")

    gen = torch.Generator().manual_seed(int(seed))
    optimizer = torch.optim.Adam(glow.parameters(), lr=lr)
    n = images.shape[0]
    n_batches = math.ceil(n / batch_size)
    enabled = progress and tqdm is not None
    bar = tqdm(total=epochs * n_batches, desc="glow", dynamic_ncols=True, disable=not enabled) \
        if enabled else None
    history = []
    glow.train()
    try:
        for epoch in range(1, epochs + 1):
            start = time.perf_counter()
            order = torch.randperm(n, generator=gen)
            total = 0.0
            for b in range(n_batches):
                idx = order[b * batch_size:(b + 1) * batch_size]
                x = images[idx].to(p.device)
                loss = bits_per_dim(glow, x, n_bins, generator=gen, reduction="mean")
                value = loss.item()
                if not math.isfinite(value):
                    raise NonFiniteError(f"glow training: non-finite bits/dim {value} "
                                         f"at epoch {epoch}, batch {b + 1}", epoch=epoch)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total += value * x.shape[0]
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(epoch=epoch, bpd=f"{value:.3f}")
            history.append({"epoch": epoch, "bits_per_dim": total / n,
                            "seconds": time.perf_counter() - start})
    finally:
        if bar is not None:
            bar.close()
    return history
