"""Slow, obviously-correct pure-PyTorch versions of every op in :mod:`sdu_ext.ops`.

Tests compare the fused kernels against these (in float64), and the benchmarks use
them as the eager and ``torch.compile`` baselines, so both stay in sync.
"""
import torch

FORMS = ("mean_ratio", "ratio_of_means", "difference")
RATIO_FLOOR = 1e-12  # denominators of the ratio forms are floored here (see csrc/common/math.h)


def soft_threshold(x, theta):
    """sign(x) * max(|x| - theta, 0), theta broadcast against x."""
    return torch.sign(x) * torch.clamp(x.abs() - theta, min=0)


def lista_layer(y, xs, W1, W2, theta):
    """soft_threshold(y @ W1.T + xs @ W2.T, theta)."""
    return soft_threshold(y @ W1.T + xs @ W2.T, theta)


def residual_norms(iterates, reference=None):
    """(L+1, B) norms of iterates[l, b] - reference[b], accumulated in float32 or wider."""
    diff = iterates if reference is None else iterates - reference.unsqueeze(0)
    acc = torch.promote_types(diff.dtype, torch.float32)
    return torch.linalg.vector_norm(diff.to(acc), dim=-1).to(iterates.dtype)


def floored(v):
    """max(v, RATIO_FLOOR) that lets NaN through (the ratio forms' denominator)."""
    return torch.where(v < RATIO_FLOOR, torch.full_like(v, RATIO_FLOOR), v)


def descent_violations(norms, eps, form):
    """Constraint values (L,) and per-sample values (L, B) from norms (L+1, B)."""
    if form not in FORMS:
        raise ValueError(f"form: expected one of {FORMS}, got {form!r}")
    keep = 1.0 - eps
    prev, cur = norms[:-1], norms[1:]
    if form == "difference":
        per_sample = cur - keep * prev
    else:
        per_sample = cur / floored(prev) - keep
    if form == "ratio_of_means":
        values = cur.mean(dim=1) / floored(prev.mean(dim=1)) - keep
    else:
        values = per_sample.mean(dim=1)
    return values, per_sample


def descent_constraints(iterates, reference, eps, form):
    """descent_violations(residual_norms(iterates, reference), eps, form)."""
    return descent_violations(residual_norms(iterates, reference), eps, form)


def min_norm_subgradient(grad, y, alpha):
    """Minimum-norm element of grad + alpha * d||y||_1 (elementwise)."""
    shrunk = torch.sign(grad) * torch.clamp(grad.abs() - alpha, min=0)
    return torch.where(y != 0, grad + alpha * torch.sign(y), shrunk)
