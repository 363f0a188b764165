"""Ops of the descent constraints: ``residual_norms``, ``descent_violations`` (three forms),
the fused ``descent_constraints`` and their backward ops, one block per op (check, wrapper,
fake kernel, autograd, vmap rule)."""
import torch

from ..reference import FORMS, RATIO_FLOOR, floored
from ._common import (
    _FLOATING,
    _Function,
    _acc,
    _as_float,
    _call,
    _check_floating,
    _check_like,
    _check_same_shape,
    _ops,
    _register_autograd,
    _register_vmap,
    _safe_div,
    _shape,
    _to_front,
)


# ================================================================ residual_norms


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


def residual_norms(iterates, reference=None):
    """Per-layer, per-sample Euclidean norms.

    Args:
        iterates: (L+1, B, m) stacked layer outputs (index 0 = initial point).
        reference: (B, m) or None.
    Returns:
        (L+1, B) tensor of ``||iterates[l, b] - reference[b]||`` (or ``||iterates[l, b]||``),
        in iterates' dtype, accumulated in float32 or wider. At a zero norm the
        derivative taken is 0.
    """
    return _call(_ResidualNorms, _ops.residual_norms, iterates, reference)


@torch.library.register_fake("sdu::residual_norms")
def _(iterates, reference):
    _check_iterates(iterates, reference)
    return iterates.new_empty(iterates.shape[:2])


def _residual(iterates, reference):
    return iterates if reference is None else iterates - reference.unsqueeze(-3)


def _residual_tangent(d_iterates, d_reference, like):
    if d_iterates is None and d_reference is None:
        return None
    if d_reference is None:
        return d_iterates
    d = -d_reference.unsqueeze(-3).expand(like.shape)
    return d if d_iterates is None else d_iterates + d


def _norms_jvp(iterates, reference, norms, d_iterates, d_reference):
    """Tangent of the norms: <d, d'> / ||d|| with d = iterates - reference (0 at a zero norm)."""
    dd = _residual_tangent(d_iterates, d_reference, iterates)
    if dd is None:
        return torch.zeros_like(norms)
    inner = (_acc(_residual(iterates, reference)) * _acc(dd)).sum(-1)
    return _safe_div(inner, _acc(norms)).to(norms.dtype)


class _ResidualNorms(_Function):
    @staticmethod
    def forward(iterates, reference):
        return _ops.residual_norms(iterates, reference)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.has_reference = inputs[1] is not None
        ctx.save_for_backward(*inputs, output)
        ctx.save_for_forward(*inputs, output)

    @staticmethod
    def backward(ctx, grad):
        iterates, reference, norms = ctx.saved_tensors
        reference_grad = ctx.has_reference and ctx.needs_input_grad[1]
        g_it, g_ref = _call(_ResidualNormsBackward, _ops.residual_norms_backward,
                            grad, iterates, reference, norms, reference_grad)
        return (g_it if ctx.needs_input_grad[0] else None, g_ref if reference_grad else None)

    @staticmethod
    def jvp(ctx, d_iterates, d_reference):
        iterates, reference, norms = ctx.saved_tensors
        return _norms_jvp(iterates, reference, norms, d_iterates, d_reference)


_register_autograd("residual_norms", _ResidualNorms, "sdu_ext.ops.residual_norms")


def _merge_batch(t, bdim, n, dim):
    """Batched (bdim) or shared t with the vmapped dimension merged into dimension ``dim``
    of the per-sample shape (the sample batch B): (..., n * B, ...)."""
    t = _to_front(t, bdim, n).movedim(0, dim)
    return t.reshape(t.shape[:dim] + (-1,) + t.shape[dim + 2:])


def _split_batch(t, n, dim):
    return t.reshape(t.shape[:dim] + (n, -1) + t.shape[dim + 1:])


def _vmap_residual_norms(info, in_dims, iterates, reference):
    n = info.batch_size
    it = _merge_batch(iterates, in_dims[0], n, 1)
    ref = None if reference is None else _merge_batch(reference, in_dims[1], n, 0)
    norms = _call(_ResidualNorms, _ops.residual_norms, it, ref)
    return _split_batch(norms, n, 1), 1
_register_vmap("residual_norms", _vmap_residual_norms, _ResidualNorms)


# ================================================================ residual_norms_backward


@torch.library.register_fake("sdu::residual_norms_backward")
def _(grad, iterates, reference, norms, reference_grad=True):
    _check_iterates(iterates, reference)
    L1, B = iterates.shape[:2]
    if tuple(grad.shape) != (L1, B):
        raise RuntimeError(f"grad: expected shape ({L1}, {B}) = (L+1, B), got {_shape(grad)}")
    _check_same_shape(norms, "norms", grad, None)
    g_ref = torch.empty_like(reference) if reference is not None and reference_grad else iterates.new_empty(0)
    return torch.empty_like(iterates, memory_format=torch.contiguous_format), g_ref


class _ResidualNormsBackward(_Function):
    """g_it[l, b] = s[l, b] d[l, b] with s = grad / norms (0 at a zero norm) and
    d = iterates - reference; g_ref[b] = -sum_l g_it[l, b], computed only with a reference
    and ``reference_grad`` (else an empty (0,) tensor, not differentiable). Its inputs grad,
    iterates, reference and norms are treated as independent (norms is the saved forward
    output, whose own dependence on the iterates autograd follows through residual_norms)."""

    @staticmethod
    def forward(grad, iterates, reference, norms, reference_grad=True):
        return _ops.residual_norms_backward(grad, iterates, reference, norms, reference_grad)

    @staticmethod
    def setup_context(ctx, inputs, output):
        grad, iterates, reference, norms = inputs[:4]
        ctx.has_reference = reference is not None
        ctx.reference_grad = ctx.has_reference and (inputs[4] if len(inputs) > 4 else True)
        if not ctx.reference_grad:
            ctx.mark_non_differentiable(output[1])
        ctx.save_for_backward(grad, iterates, reference, norms)
        ctx.save_for_forward(grad, iterates, reference, norms)

    @staticmethod
    def backward(ctx, grad_g_it, grad_g_ref):
        grad, iterates, reference, norms = ctx.saved_tensors
        need = ctx.needs_input_grad
        dtype = iterates.dtype
        e = _acc(grad_g_it)
        if ctx.reference_grad and grad_g_ref is not None:
            e = e - _acc(grad_g_ref).unsqueeze(0)
        n = _acc(norms)
        s = _safe_div(_acc(grad), n)
        out = [None] * 5
        if need[0] or need[3]:
            inner = (_acc(_residual(iterates, reference)) * e).sum(-1)
            if need[0]:
                out[0] = _safe_div(inner, n).to(grad.dtype)
            if need[3]:
                out[3] = (-_safe_div(s * inner, n)).to(norms.dtype)
        if need[1] or need[2]:
            g_it = s.unsqueeze(-1) * e
            if need[1]:
                out[1] = g_it.to(dtype)
            if need[2]:
                out[2] = (-g_it.sum(0)).to(dtype)
        return tuple(out)

    @staticmethod
    def jvp(ctx, d_grad, d_iterates, d_reference, d_norms, *_d_reference_grad):
        grad, iterates, reference, norms = ctx.saved_tensors
        n = _acc(norms)
        s = _safe_div(_acc(grad), n)
        ds = torch.zeros_like(s)
        if d_grad is not None:
            ds = ds + _safe_div(_acc(d_grad), n)
        if d_norms is not None:
            ds = ds - _safe_div(s * _acc(d_norms), n)
        d_g_it = ds.unsqueeze(-1) * _acc(_residual(iterates, reference))
        dd = _residual_tangent(d_iterates, d_reference, iterates)
        if dd is not None:
            d_g_it = d_g_it + s.unsqueeze(-1) * _acc(dd)
        d_g_ref = (-d_g_it.sum(0)).to(iterates.dtype) if ctx.reference_grad else None
        return d_g_it.to(iterates.dtype), d_g_ref


_register_autograd("residual_norms_backward", _ResidualNormsBackward, "sdu_ext.ops.residual_norms")


def _vmap_residual_norms_backward(info, in_dims, grad, iterates, reference, norms, reference_grad=True):
    n = info.batch_size
    g = _merge_batch(grad, in_dims[0], n, 1)
    it = _merge_batch(iterates, in_dims[1], n, 1)
    ref = None if reference is None else _merge_batch(reference, in_dims[2], n, 0)
    nm = _merge_batch(norms, in_dims[3], n, 1)
    g_it, g_ref = _call(_ResidualNormsBackward, _ops.residual_norms_backward, g, it, ref, nm, reference_grad)
    if reference is None or not reference_grad:
        return (_split_batch(g_it, n, 1), g_ref), (1, None)
    return (_split_batch(g_it, n, 1), _split_batch(g_ref, n, 0)), (1, 0)
_register_vmap("residual_norms_backward", _vmap_residual_norms_backward, _ResidualNormsBackward)


# ================================================================ descent_violations


def _check_eps_form(eps, form):
    if not (0.0 <= eps < 1.0):
        raise ValueError(f"eps: expected a value in [0, 1), got {eps:g}")
    if form not in FORMS:
        raise ValueError(
            "form: expected one of " + ", ".join(f"'{f}'" for f in FORMS) + f", got '{form}'"
        )


def _check_norms(norms):
    _check_floating(norms, "norms")
    if norms.dim() != 2:
        raise RuntimeError(f"norms: expected a 2-D tensor (L+1, B), got shape {_shape(norms)}")
    if norms.shape[0] < 1:
        raise RuntimeError(f"norms: expected at least one layer (L+1 >= 1), got shape {_shape(norms)}")


def descent_violations(norms, eps=0.05, form="mean_ratio"):
    """Descent-constraint values from residual norms (SPEC section 3).

    Args:
        norms: (L+1, B) residuals r_{l,b} >= 0, row 0 = initial point. A negative
            entry raises ValueError in eager mode (see ``_check_nonnegative``).
        eps: required decrease, in [0, 1); layer l must reach r_l <= (1 - eps) r_{l-1}.
        form: "mean_ratio" (mean_b r_l/r_{l-1} - (1-eps)), "ratio_of_means"
            (mean r_l / mean r_{l-1} - (1-eps)) or "difference" (mean_b r_l - (1-eps) r_{l-1}).
            Denominators are floored at ``reference.RATIO_FLOOR`` (1e-12), so a zero
            residual gives a large finite ratio; in float16, whose range ends at
            65504, such a ratio saturates to +inf (never NaN): use float32 norms
            or the "difference" form when residuals can vanish. The derivative of
            a ratio is formed as ``(r / den) / den``, exact over the dtype's range.
    Returns:
        ``(values, per_sample)``: (L,) differentiable constraint values (<= 0 means
        satisfied) and (L, B) per-sample values (a diagnostic, not differentiable;
        for ratio_of_means it holds the per-sample ratios). An empty batch gives NaN
        values, like ``torch.mean``.
    """
    eps = _as_float(eps, "eps", "a value in [0, 1)")
    _check_nonnegative(norms)
    return _call(_DescentViolations, _ops.descent_violations, norms, eps, form)


def _check_nonnegative(norms):
    """ValueError when eager ``norms`` hold a negative entry (residual norms are >= 0).

    A check of values, so it lives in this wrapper only: fake tensors have none, and it is
    skipped while torch.compile traces and inside torch.func transforms (no data to read
    there). It reads ``norms`` once (on CUDA: one synchronisation).
    """
    if not isinstance(norms, torch.Tensor) or norms.numel() == 0 or torch.compiler.is_compiling() \
            or torch._C._functorch.peek_interpreter_stack() is not None or norms.dtype not in _FLOATING:
        return
    negative = norms.detach() < 0
    if bool(negative.any()):
        raise ValueError(f"norms: expected residual norms >= 0, got {int(negative.sum())} negative "
                         f"(smallest {float(norms.detach().min()):g}) in shape {_shape(norms)}")


@torch.library.register_fake("sdu::descent_violations")
def _(norms, eps, form):
    _check_norms(norms)
    _check_eps_form(eps, form)
    L1, B = norms.shape
    return norms.new_empty(L1 - 1), norms.new_empty(L1 - 1, B)


def _violations_jvp(norms, d_norms, eps, form):
    """Tangent (..., L) of the constraint values for norms (..., L+1, B) moving along
    d_norms; it is also the gradient of <grad_values, values> w.r.t. grad_values."""
    r, dr = _acc(norms), _acc(d_norms)
    keep = 1.0 - eps
    prev, cur, d_prev, d_cur = r[..., :-1, :], r[..., 1:, :], dr[..., :-1, :], dr[..., 1:, :]
    if form == "difference":
        out = (d_cur - keep * d_prev).mean(-1)
    elif form == "mean_ratio":
        den = floored(prev)
        slope = torch.where(prev < RATIO_FLOOR, torch.zeros_like(prev), cur / den)
        out = ((d_cur - slope * d_prev) / den).mean(-1)
    else:
        mean_prev, mean_cur = prev.mean(-1), cur.mean(-1)
        den = floored(mean_prev)
        slope = torch.where(mean_prev < RATIO_FLOOR, torch.zeros_like(mean_prev), mean_cur / den)
        out = (d_cur.mean(-1) - slope * d_prev.mean(-1)) / den
    return out.to(norms.dtype)


def _violations_hvp(grad, norms, u, eps, form):
    """sum_l grad_l * Hessian(values_l)(norms) @ u, shape (..., L+1, B) like norms.

    Every ratio is divided by its denominator one factor at a time, so nothing
    overflows or underflows before the true result does."""
    if form == "difference":
        return torch.zeros_like(norms)
    r, uu = _acc(norms), _acc(u)
    prev, cur, u_prev, u_cur = r[..., :-1, :], r[..., 1:, :], uu[..., :-1, :], uu[..., 1:, :]
    k = _acc(grad).unsqueeze(-1) / r.shape[-1]  # grad_l / B
    if form == "mean_ratio":
        den = floored(prev)
        live = (prev >= RATIO_FLOOR) | (prev != prev)
        q = cur / den
        h_cur = -k * (u_prev / den) / den
        h_prev = k / den * (2 * q * (u_prev / den) - u_cur / den)
    else:
        mean_prev, mean_cur = prev.mean(-1, keepdim=True), cur.mean(-1, keepdim=True)
        den = floored(mean_prev)
        live = (mean_prev >= RATIO_FLOOR) | (mean_prev != mean_prev)
        q = mean_cur / den
        s_prev, s_cur = u_prev.sum(-1, keepdim=True), u_cur.sum(-1, keepdim=True)
        nb = r.shape[-1]
        h_cur = (-k * (s_prev / den) / den / nb).expand(cur.shape)
        h_prev = (k / den * (2 * q * (s_prev / den) - s_cur / den) / nb).expand(prev.shape)
    zero = torch.zeros_like(h_prev)
    h_prev, h_cur = torch.where(live, h_prev, zero), torch.where(live, h_cur, zero)
    out = torch.nn.functional.pad(h_prev, [0, 0, 0, 1]) + torch.nn.functional.pad(h_cur, [0, 0, 1, 0])
    return out.to(norms.dtype)


class _DescentViolations(_Function):
    @staticmethod
    def forward(norms, eps, form):
        return _ops.descent_violations(norms, eps, form)

    @staticmethod
    def setup_context(ctx, inputs, output):
        norms, ctx.eps, ctx.form = inputs
        ctx.mark_non_differentiable(output[1])
        ctx.save_for_backward(norms)
        ctx.save_for_forward(norms)

    @staticmethod
    def backward(ctx, grad_values, _grad_per_sample):
        (norms,) = ctx.saved_tensors
        return _call(_DescentViolationsBackward, _ops.descent_violations_backward,
                     grad_values, norms, ctx.eps, ctx.form), None, None

    @staticmethod
    def jvp(ctx, d_norms, _d_eps, _d_form):
        (norms,) = ctx.saved_tensors
        return _violations_jvp(norms, d_norms, ctx.eps, ctx.form), None


_register_autograd("descent_violations", _DescentViolations, "sdu_ext.ops.descent_violations")


def _batched_violations(norms, eps, form):
    """(values (n, L), per_sample (L, n, B)) for norms (n, L+1, B): the per-sample values
    from one kernel call on the merged (L+1, n * B) batch, the values (means over each
    vmapped sample's B) by the differentiable composition, in float64."""
    n = norms.shape[0]
    merged = norms.movedim(0, 1).reshape(norms.shape[1], -1)
    _, per_sample = _call(_DescentViolations, _ops.descent_violations, merged, eps, form)
    r = norms.to(torch.float64)
    prev, cur, keep = r[:, :-1], r[:, 1:], 1.0 - eps
    if form == "difference":
        values = (cur - keep * prev).mean(-1)
    elif form == "mean_ratio":
        values = (cur / floored(prev)).mean(-1) - keep
    else:
        values = cur.mean(-1) / floored(prev.mean(-1)) - keep
    return values.to(norms.dtype), _split_batch(per_sample, n, 1)


def _vmap_descent_violations(info, in_dims, norms, eps, form):
    norms = _to_front(norms, in_dims[0], info.batch_size)
    return _batched_violations(norms, eps, form), (0, 1)
_register_vmap("descent_violations", _vmap_descent_violations, _DescentViolations)


# ================================================================ descent_violations_backward


@torch.library.register_fake("sdu::descent_violations_backward")
def _(grad, norms, eps, form):
    _check_norms(norms)
    _check_eps_form(eps, form)
    L = norms.shape[0] - 1
    if tuple(grad.shape) != (L,):
        raise RuntimeError(f"grad: expected shape ({L},) = (L,), got {_shape(grad)}")
    return torch.empty_like(norms, memory_format=torch.contiguous_format)


class _DescentViolationsBackward(_Function):
    """grad_norms = sum_l grad_l * d values_l / d norms: linear in grad; its derivative in
    norms is the Hessian of the values (zero for the difference form)."""

    @staticmethod
    def forward(grad, norms, eps, form):
        return _ops.descent_violations_backward(grad, norms, eps, form)

    @staticmethod
    def setup_context(ctx, inputs, output):
        grad, norms, ctx.eps, ctx.form = inputs
        ctx.save_for_backward(grad, norms)
        ctx.save_for_forward(grad, norms)

    @staticmethod
    def backward(ctx, grad_out):
        grad, norms = ctx.saved_tensors
        need = ctx.needs_input_grad
        g_grad = _violations_jvp(norms, grad_out, ctx.eps, ctx.form).to(grad.dtype) if need[0] else None
        g_norms = _violations_hvp(grad, norms, grad_out, ctx.eps, ctx.form) if need[1] else None
        return g_grad, g_norms, None, None

    @staticmethod
    def jvp(ctx, d_grad, d_norms, _d_eps, _d_form):
        grad, norms = ctx.saved_tensors
        out = torch.zeros_like(norms)
        if d_grad is not None:
            out = out + _call(_DescentViolationsBackward, _ops.descent_violations_backward,
                              d_grad, norms, ctx.eps, ctx.form)
        if d_norms is not None:
            out = out + _violations_hvp(grad, norms, d_norms, ctx.eps, ctx.form)
        return out


_register_autograd("descent_violations_backward", _DescentViolationsBackward,
                   "sdu_ext.ops.descent_violations")


def _violations_vjp(grad, norms, eps, form):
    """grad (..., L) times the Jacobian of the values at norms (..., L+1, B): the
    vectorised composition of the backward kernel's formula (used by the vmap rule)."""
    r = _acc(norms)
    k = _acc(grad).unsqueeze(-1) / r.shape[-1]
    keep = 1.0 - eps
    prev, cur = r[..., :-1, :], r[..., 1:, :]
    if form == "difference":
        g_cur, g_prev = k.expand(cur.shape), (-keep * k).expand(prev.shape)
    elif form == "mean_ratio":
        den = floored(prev)
        g_cur = k / den
        g_prev = torch.where(prev < RATIO_FLOOR, torch.zeros_like(prev), -k * (cur / den) / den)
    else:
        mean_prev, mean_cur = prev.mean(-1, keepdim=True), cur.mean(-1, keepdim=True)
        den = floored(mean_prev)
        g_cur = (k / den).expand(cur.shape)
        g_prev = torch.where(mean_prev < RATIO_FLOOR, torch.zeros_like(mean_prev),
                             -k * (mean_cur / den) / den).expand(prev.shape)
    out = torch.nn.functional.pad(g_prev, [0, 0, 0, 1]) + torch.nn.functional.pad(g_cur, [0, 0, 1, 0])
    return out.to(norms.dtype)


def _vmap_descent_violations_backward(info, in_dims, grad, norms, eps, form):
    n = info.batch_size
    grad, norms = _to_front(grad, in_dims[0], n), _to_front(norms, in_dims[1], n)
    return _violations_vjp(grad, norms, eps, form), 0
_register_vmap("descent_violations_backward", _vmap_descent_violations_backward, _DescentViolationsBackward)


# ================================================================ descent_constraints


def descent_constraints(iterates, reference, eps=0.05, form="mean_ratio", return_norms=False):
    """Fused ``descent_violations(residual_norms(iterates, reference), eps, form)``.

    One pass over the (L+1, B, m) iterates forward and one backward. ``reference``
    is (B, m) or None. Returns ``(values (L,), per_sample (L, B))``, plus the
    (L+1, B) residual norms when ``return_norms`` (differentiable too).
    """
    values, per_sample, norms = _call(_DescentConstraints, _ops.descent_constraints,
                                      iterates, reference, _as_float(eps, "eps", "a value in [0, 1)"), form)
    return (values, per_sample, norms) if return_norms else (values, per_sample)


@torch.library.register_fake("sdu::descent_constraints")
def _(iterates, reference, eps, form):
    _check_iterates(iterates, reference)
    _check_eps_form(eps, form)
    L1, B = iterates.shape[:2]
    return iterates.new_empty(L1 - 1), iterates.new_empty(L1 - 1, B), iterates.new_empty(L1, B)


class _DescentConstraints(_Function):
    @staticmethod
    def forward(iterates, reference, eps, form):
        return _ops.descent_constraints(iterates, reference, eps, form)

    @staticmethod
    def setup_context(ctx, inputs, output):
        iterates, reference, ctx.eps, ctx.form = inputs
        ctx.has_reference = reference is not None
        ctx.mark_non_differentiable(output[1])
        ctx.save_for_backward(iterates, reference, output[2])
        ctx.save_for_forward(iterates, reference, output[2])

    @staticmethod
    def backward(ctx, grad_values, _grad_per_sample, grad_norms):
        iterates, reference, norms = ctx.saved_tensors
        g = _call(_DescentViolationsBackward, _ops.descent_violations_backward,
                  grad_values, norms, ctx.eps, ctx.form)
        if grad_norms is not None:
            g = g + grad_norms
        reference_grad = ctx.has_reference and ctx.needs_input_grad[1]
        g_it, g_ref = _call(_ResidualNormsBackward, _ops.residual_norms_backward,
                            g, iterates, reference, norms, reference_grad)
        return g_it if ctx.needs_input_grad[0] else None, g_ref if reference_grad else None, None, None

    @staticmethod
    def jvp(ctx, d_iterates, d_reference, _d_eps, _d_form):
        iterates, reference, norms = ctx.saved_tensors
        d_norms = _norms_jvp(iterates, reference, norms, d_iterates, d_reference)
        return _violations_jvp(norms, d_norms, ctx.eps, ctx.form), None, d_norms


_register_autograd("descent_constraints", _DescentConstraints, "sdu_ext.ops.descent_constraints")


def _vmap_descent_constraints(info, in_dims, iterates, reference, eps, form):
    n = info.batch_size
    it = _merge_batch(iterates, in_dims[0], n, 1)
    ref = None if reference is None else _merge_batch(reference, in_dims[1], n, 0)
    norms = _call(_ResidualNorms, _ops.residual_norms, it, ref)
    norms = _split_batch(norms, n, 1).movedim(1, 0)  # (n, L+1, B)
    values, per_sample = _batched_violations(norms, eps, form)
    return (values, per_sample, norms), (0, 1, 0)
_register_vmap("descent_constraints", _vmap_descent_constraints, _DescentConstraints)
