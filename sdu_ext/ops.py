"""Fused ops of the ``sdu`` namespace: Python entry points, fake kernels and autograd.

Schemas and CPU/CUDA kernels are defined in C++ (csrc/); this module registers the
fake (meta) kernels used by ``torch.compile`` and the autograd formulas, and wraps
each op with a documented Python function. Every op accepts float32, float64,
float16 and bfloat16 (half-precision inputs accumulate in float32), any batch size
including 0, and non-contiguous inputs.
"""
import numbers

import torch

from . import _C  # noqa: F401  (registers the schemas)
from .reference import FORMS

_ops = torch.ops.sdu
_FLOATING = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def _shape(t):
    s = tuple(getattr(t, "shape", t))
    return "(" + ", ".join(str(v) for v in s) + ("," if len(s) == 1 else "") + ")"


def _check_floating(t, name):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a tensor, got {type(t).__name__}")
    if t.dtype not in _FLOATING:
        raise RuntimeError(f"{name}: expected dtype float32, float64, float16 or bfloat16, got {t.dtype}")


def _check_like(t, name, ref, ref_name, dtype=True):
    if dtype and t.dtype != ref.dtype:
        raise RuntimeError(f"{name}: expected dtype {ref.dtype} (same as {ref_name}), got {t.dtype}")
    if t.device != ref.device:
        raise RuntimeError(f"{name}: expected device {ref.device} (same as {ref_name}), got {t.device}")


def _check_theta(x, theta, x_name="x"):
    _check_floating(theta, "theta")
    _check_like(theta, "theta", x, x_name, dtype=False)
    ok = theta.dim() <= x.dim() and all(
        t == 1 or t == s for t, s in zip(reversed(theta.shape), reversed(x.shape))
    )
    if not ok:
        raise RuntimeError(
            f"theta: expected shape broadcastable to {x_name} {_shape(x)}, got {_shape(theta)}"
        )


def _check_eps_form(eps, form):
    if not (0.0 <= eps < 1.0):
        raise ValueError(f"eps: expected a value in [0, 1), got {eps:g}")
    if form not in FORMS:
        raise ValueError(
            "form: expected one of " + ", ".join(f"'{f}'" for f in FORMS) + f", got '{form}'"
        )


def _check_iterates(iterates, reference):
    _check_floating(iterates, "iterates")
    if iterates.dim() != 3:
        raise RuntimeError(f"iterates: expected a 3-D tensor (L+1, B, m), got shape {_shape(iterates)}")
    if iterates.shape[0] < 1:
        raise RuntimeError(
            f"iterates: expected at least one layer (L+1 >= 1), got shape {_shape(iterates)}"
        )
    if reference is not None:
        _check_floating(reference, "reference")
        _check_like(reference, "reference", iterates, "iterates")
        if tuple(reference.shape) != tuple(iterates.shape[1:]):
            raise RuntimeError(
                f"reference: expected shape ({iterates.shape[1]}, {iterates.shape[2]}) = (B, m) "
                f"of iterates, got {_shape(reference)}"
            )


def _check_norms(norms):
    _check_floating(norms, "norms")
    if norms.dim() != 2:
        raise RuntimeError(f"norms: expected a 2-D tensor (L+1, B), got shape {_shape(norms)}")
    if norms.shape[0] < 1:
        raise RuntimeError(f"norms: expected at least one layer (L+1 >= 1), got shape {_shape(norms)}")


def _check_subgradient(grad, y, alpha):
    _check_floating(grad, "grad")
    _check_floating(y, "y")
    _check_like(y, "y", grad, "grad")
    _check_same_shape(y, "y", grad, "grad")
    if not alpha >= 0:
        raise ValueError(f"alpha: expected a non-negative value, got {alpha:g}")


def _check_lista(y, xs, W1, W2, theta):
    for t, name in ((y, "y"), (xs, "xs"), (W1, "W1"), (W2, "W2")):
        _check_floating(t, name)
    if y.dim() != 2:
        raise RuntimeError(f"y: expected a 2-D tensor (B, m), got shape {_shape(y)}")
    if xs.dim() != 2:
        raise RuntimeError(f"xs: expected a 2-D tensor (B, n), got shape {_shape(xs)}")
    B, m = y.shape
    n = xs.shape[1]
    for t, name, shape, what in (
        (xs, "xs", (B, n), "(B, n) with B from y"),
        (W1, "W1", (m, m), "(m, m) with m from y"),
        (W2, "W2", (m, n), "(m, n) with m from y and n from xs"),
    ):
        _check_like(t, name, y, "y")
        if tuple(t.shape) != shape:
            raise RuntimeError(f"{name}: expected shape ({shape[0]}, {shape[1]}) = {what}, got {_shape(t)}")
    _check_theta(y, theta, "y")


def _check_same_shape(t, name, ref, ref_name):
    if t.shape != ref.shape:
        what = f" (same as {ref_name})" if ref_name else ""
        raise RuntimeError(f"{name}: expected shape {_shape(ref)}{what}, got {_shape(t)}")


def _as_theta(theta, x):
    if isinstance(theta, numbers.Real) and not isinstance(theta, bool):
        return torch.tensor(float(theta), dtype=x.dtype, device=x.device)
    return theta


# ---------------------------------------------------------------- public wrappers

def soft_threshold(x, theta):
    """Soft-thresholding ``sign(x) * max(|x| - theta, 0)``.

    Args:
        x: tensor of any shape, floating dtype.
        theta: 0-dim tensor (or Python number), a vector of length ``x.shape[-1]``,
            or any tensor broadcastable to ``x`` (any floating dtype, same device).
            Negative thresholds follow the same formula.
    Returns:
        Tensor of ``x``'s shape and dtype. Differentiable in ``x`` and ``theta``;
        the backward reads only the output (the mask is ``y != 0``).
    """
    return _ops.soft_threshold(x, _as_theta(theta, x))


class _SoftThresholdInplace(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, theta):
        _ops.soft_threshold_(x, theta)
        ctx.mark_dirty(x)
        ctx.save_for_backward(x, theta)
        return x

    @staticmethod
    def backward(ctx, grad):
        y, theta = ctx.saved_tensors
        grad_x, grad_theta = _ops.soft_threshold_backward(grad, y, theta)
        return grad_x, grad_theta


def soft_threshold_(x, theta):
    """In-place :func:`soft_threshold`: overwrites and returns ``x``.

    Stays differentiable: its backward needs only the output, which is ``x`` itself.
    """
    theta = _as_theta(theta, x)
    if torch.is_grad_enabled() and (x.requires_grad or theta.requires_grad):
        return _SoftThresholdInplace.apply(x, theta)
    _ops.soft_threshold_(x, theta)
    return x


def lista_layer(y, xs, W1, W2, theta):
    """One untied LISTA layer ``soft_threshold(y @ W1.T + xs @ W2.T, theta)``.

    Shapes: y (B, m), xs (B, n), W1 (m, m), W2 (m, n), theta broadcastable to (B, m).
    Returns (B, m). The products go to the backend BLAS and are thresholded in
    place; only the output is saved for backward. Differentiable in all five inputs.
    """
    return _ops.lista_layer(y, xs, W1, W2, _as_theta(theta, y))


def residual_norms(iterates, reference=None):
    """Per-layer, per-sample Euclidean norms.

    Args:
        iterates: (L+1, B, m) stacked layer outputs (index 0 = initial point).
        reference: (B, m) or None.
    Returns:
        (L+1, B) tensor of ``||iterates[l, b] - reference[b]||`` (or ``||iterates[l, b]||``),
        in iterates' dtype, accumulated in float32 or wider.
    """
    return _ops.residual_norms(iterates, reference)


def descent_violations(norms, eps=0.05, form="mean_ratio"):
    """Descent-constraint values from residual norms (SPEC section 3).

    Args:
        norms: (L+1, B) residuals r_{l,b}, row 0 = initial point.
        eps: required decrease, in [0, 1); layer l must reach r_l <= (1 - eps) r_{l-1}.
        form: "mean_ratio" (mean_b r_l/r_{l-1} - (1-eps)), "ratio_of_means"
            (mean r_l / mean r_{l-1} - (1-eps)) or "difference" (mean_b r_l - (1-eps) r_{l-1}).
            Denominators are floored at ``reference.RATIO_FLOOR`` (1e-12), so a zero
            residual gives a large finite ratio; in float16, whose range ends at
            65504, such a ratio saturates to +inf (never NaN): use float32 norms
            or the "difference" form when residuals can vanish.
    Returns:
        ``(values, per_sample)``: (L,) differentiable constraint values (<= 0 means
        satisfied) and (L, B) per-sample values (a diagnostic, not differentiable;
        for ratio_of_means it holds the per-sample ratios). An empty batch gives NaN
        values, like ``torch.mean``.
    """
    return _ops.descent_violations(norms, float(eps), form)


def descent_constraints(iterates, reference, eps=0.05, form="mean_ratio", return_norms=False):
    """Fused ``descent_violations(residual_norms(iterates, reference), eps, form)``.

    One pass over the (L+1, B, m) iterates forward and one backward. ``reference``
    is (B, m) or None. Returns ``(values (L,), per_sample (L, B))``, plus the
    (L+1, B) residual norms when ``return_norms`` (differentiable too).
    """
    values, per_sample, norms = _ops.descent_constraints(iterates, reference, float(eps), form)
    return (values, per_sample, norms) if return_norms else (values, per_sample)


def min_norm_subgradient(grad, y, alpha):
    """Minimum-norm subgradient of ``g + alpha * ||.||_1`` at ``y``, elementwise.

    ``grad`` is grad g(y) (same shape and dtype as ``y``), ``alpha >= 0`` a float.
    Entry i is ``grad_i + alpha * sign(y_i)`` where ``y_i != 0`` and
    ``shrink(grad_i, alpha)`` where ``y_i == 0``. Differentiable in ``grad``.
    """
    return _ops.min_norm_subgradient(grad, y, float(alpha))


# ---------------------------------------------------------------- fake kernels

@torch.library.register_fake("sdu::soft_threshold")
def _(x, theta):
    _check_floating(x, "x")
    _check_theta(x, theta)
    return torch.empty_like(x, memory_format=torch.contiguous_format)


@torch.library.register_fake("sdu::soft_threshold_")
def _(x, theta):
    _check_floating(x, "x")
    _check_theta(x, theta)


@torch.library.register_fake("sdu::soft_threshold_backward")
def _(grad, y, theta):
    _check_floating(y, "y")
    _check_floating(grad, "grad")
    _check_same_shape(grad, "grad", y, "y")
    _check_theta(y, theta, "y")
    return torch.empty_like(y, memory_format=torch.contiguous_format), torch.empty_like(theta)


@torch.library.register_fake("sdu::lista_layer")
def _(y, xs, W1, W2, theta):
    _check_lista(y, xs, W1, W2, theta)
    return y.new_empty(y.shape)


@torch.library.register_fake("sdu::residual_norms")
def _(iterates, reference):
    _check_iterates(iterates, reference)
    return iterates.new_empty(iterates.shape[:2])


@torch.library.register_fake("sdu::residual_norms_backward")
def _(grad, iterates, reference, norms):
    _check_iterates(iterates, reference)
    L1, B = iterates.shape[:2]
    if tuple(grad.shape) != (L1, B):
        raise RuntimeError(f"grad: expected shape ({L1}, {B}) = (L+1, B), got {_shape(grad)}")
    _check_same_shape(norms, "norms", grad, None)
    g_ref = torch.empty_like(reference) if reference is not None else iterates.new_empty(0)
    return torch.empty_like(iterates, memory_format=torch.contiguous_format), g_ref


@torch.library.register_fake("sdu::descent_violations")
def _(norms, eps, form):
    _check_norms(norms)
    _check_eps_form(eps, form)
    L1, B = norms.shape
    return norms.new_empty(L1 - 1), norms.new_empty(L1 - 1, B)


@torch.library.register_fake("sdu::descent_violations_backward")
def _(grad, norms, eps, form):
    _check_norms(norms)
    _check_eps_form(eps, form)
    L = norms.shape[0] - 1
    if tuple(grad.shape) != (L,):
        raise RuntimeError(f"grad: expected shape ({L},) = (L,), got {_shape(grad)}")
    return torch.empty_like(norms, memory_format=torch.contiguous_format)


@torch.library.register_fake("sdu::descent_constraints")
def _(iterates, reference, eps, form):
    _check_iterates(iterates, reference)
    _check_eps_form(eps, form)
    L1, B = iterates.shape[:2]
    return iterates.new_empty(L1 - 1), iterates.new_empty(L1 - 1, B), iterates.new_empty(L1, B)


@torch.library.register_fake("sdu::min_norm_subgradient")
def _(grad, y, alpha):
    _check_subgradient(grad, y, alpha)
    return torch.empty_like(grad, memory_format=torch.contiguous_format)


@torch.library.register_fake("sdu::min_norm_subgradient_backward")
def _(grad_out, grad, y, alpha):
    _check_subgradient(grad, y, alpha)
    _check_same_shape(grad_out, "grad_out", grad, "grad")
    return torch.empty_like(grad, memory_format=torch.contiguous_format)


# ---------------------------------------------------------------- autograd

_lib = torch.library.Library("sdu", "IMPL")


def _soft_threshold_inplace_view(keyset, x, theta):
    # Ops defined in C++ get no ADInplaceOrView kernel of their own: without this
    # one, x's version counter would not move and autograd could not detect that
    # a tensor saved for backward was overwritten.
    torch.autograd.graph.increment_version(x)
    return _ops.soft_threshold_.default.redispatch(
        keyset & torch._C._after_ADInplaceOrView_keyset, x, theta
    )


_lib.impl("soft_threshold_", _soft_threshold_inplace_view, "ADInplaceOrView", with_keyset=True)


def _setup_soft_threshold(ctx, inputs, output):
    ctx.save_for_backward(output, inputs[1])


def _backward_soft_threshold(ctx, grad):
    y, theta = ctx.saved_tensors
    grad_x, grad_theta = _ops.soft_threshold_backward(grad, y, theta)
    return (grad_x if ctx.needs_input_grad[0] else None,
            grad_theta if ctx.needs_input_grad[1] else None)


torch.library.register_autograd(
    "sdu::soft_threshold", _backward_soft_threshold, setup_context=_setup_soft_threshold
)


def _setup_lista_layer(ctx, inputs, output):
    ctx.save_for_backward(*inputs, output)


def _backward_lista_layer(ctx, grad):
    y, xs, W1, W2, theta, out = ctx.saved_tensors
    need = ctx.needs_input_grad
    gz, grad_theta = _ops.soft_threshold_backward(grad, out, theta)
    return (
        gz @ W1 if need[0] else None,
        gz @ W2 if need[1] else None,
        gz.T @ y if need[2] else None,
        gz.T @ xs if need[3] else None,
        grad_theta if need[4] else None,
    )


torch.library.register_autograd(
    "sdu::lista_layer", _backward_lista_layer, setup_context=_setup_lista_layer
)


def _setup_residual_norms(ctx, inputs, output):
    iterates, reference = inputs
    ctx.has_reference = reference is not None
    ctx.save_for_backward(iterates, reference, output)


def _backward_residual_norms(ctx, grad):
    iterates, reference, norms = ctx.saved_tensors
    g_it, g_ref = _ops.residual_norms_backward(grad, iterates, reference, norms)
    return (g_it if ctx.needs_input_grad[0] else None,
            g_ref if ctx.has_reference and ctx.needs_input_grad[1] else None)


torch.library.register_autograd(
    "sdu::residual_norms", _backward_residual_norms, setup_context=_setup_residual_norms
)


def _setup_descent_violations(ctx, inputs, output):
    norms, ctx.eps, ctx.form = inputs
    ctx.mark_non_differentiable(output[1])
    ctx.save_for_backward(norms)


def _backward_descent_violations(ctx, grad_values, _grad_per_sample):
    (norms,) = ctx.saved_tensors
    return _ops.descent_violations_backward(grad_values, norms, ctx.eps, ctx.form), None, None


torch.library.register_autograd(
    "sdu::descent_violations", _backward_descent_violations, setup_context=_setup_descent_violations
)


def _setup_descent_constraints(ctx, inputs, output):
    iterates, reference, ctx.eps, ctx.form = inputs
    ctx.has_reference = reference is not None
    ctx.mark_non_differentiable(output[1])
    ctx.save_for_backward(iterates, reference, output[2])


def _backward_descent_constraints(ctx, grad_values, _grad_per_sample, grad_norms):
    iterates, reference, norms = ctx.saved_tensors
    g = _ops.descent_violations_backward(grad_values, norms, ctx.eps, ctx.form)
    if grad_norms is not None:
        g = g + grad_norms
    g_it, g_ref = _ops.residual_norms_backward(g, iterates, reference, norms)
    return (g_it if ctx.needs_input_grad[0] else None,
            g_ref if ctx.has_reference and ctx.needs_input_grad[1] else None, None, None)


torch.library.register_autograd(
    "sdu::descent_constraints", _backward_descent_constraints, setup_context=_setup_descent_constraints
)


def _setup_min_norm_subgradient(ctx, inputs, output):
    grad, y, ctx.alpha = inputs
    ctx.save_for_backward(grad, y)


def _backward_min_norm_subgradient(ctx, grad_out):
    grad, y = ctx.saved_tensors
    return _ops.min_norm_subgradient_backward(grad_out, grad, y, ctx.alpha), None, None


torch.library.register_autograd(
    "sdu::min_norm_subgradient", _backward_min_norm_subgradient,
    setup_context=_setup_min_norm_subgradient,
)
