"""Fused ops of the ``sdu`` namespace: Python entry points, fake kernels, autograd and vmap rules.

Schemas and CPU/CUDA kernels are defined in C++ (csrc/). This module is laid out one
op per block: the argument check, the documented wrapper, the fake (meta) kernel used by
``torch.compile``/``torch.export``, the autograd formula (an ``autograd.Function`` with
``backward`` and ``jvp``) and the vmap batching rule. Every op accepts float32, float64,
float16 and bfloat16 (half-precision inputs accumulate in float32), any batch size
including 0, and non-contiguous inputs.

How autograd is wired (see the README's transform table):

* Each differentiable raw op gets an ``Autograd`` dispatcher kernel that applies the op's
  ``autograd.Function`` when a gradient or a forward-mode tangent is needed, so backward,
  ``create_graph=True`` (double backward, to any order) and ``torch.autograd.forward_ad``
  work on ``torch.ops.sdu.*`` directly. The backward ops are ops of their own with their own
  autograd, so their derivatives are exact rather than silently zero.
* ``torch.vmap`` runs a real batching rule (``torch.library.register_vmap``) on every op.
* Under the ``torch.func`` grad/jvp transforms (``grad``, ``vjp``, ``jacrev``, ``jvp``,
  ``jacfwd``, ``hessian``) the Python wrappers below apply the ``autograd.Function``
  themselves, which functorch supports. A raw op called under such a transform raises an
  error that names the op and the transform (functorch cannot enter an ``autograd.Function``
  from inside a dispatcher kernel), never a zero tangent.
"""
import numbers

import torch
import torch.autograd.forward_ad as _fwad
from torch._C._functorch import TransformType

from . import _C  # noqa: F401  (registers the schemas)
from .reference import FORMS, RATIO_FLOOR, floored

_ops = torch.ops.sdu
_FLOATING = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
_lib = torch.library.Library("sdu", "IMPL")

# ================================================================ shared machinery


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


def _check_same_shape(t, name, ref, ref_name):
    if t.shape != ref.shape:
        what = f" (same as {ref_name})" if ref_name else ""
        raise RuntimeError(f"{name}: expected shape {_shape(ref)}{what}, got {_shape(t)}")


def _as_theta(theta, x):
    if isinstance(theta, numbers.Real) and not isinstance(theta, bool):
        return torch.tensor(float(theta), dtype=x.dtype, device=x.device)
    return theta


_TRANSFORM_NAMES = {
    TransformType.Grad: "grad (torch.func.grad / vjp / jacrev / hessian)",
    TransformType.Jvp: "jvp (torch.func.jvp / jacfwd / hessian)",
}


def _autodiff_transform():
    """The innermost active torch.func grad or jvp transform, or None."""
    for interpreter in reversed(torch._C._functorch.get_interpreter_stack() or ()):
        if interpreter.key() in _TRANSFORM_NAMES:
            return interpreter.key()
    return None


def _call(function, op, *args):
    """Run ``op`` through the dispatcher, or ``function.apply`` under torch.func grad/jvp.

    The dispatcher path is what ``torch.compile``/``torch.export`` record and what eager
    autograd, forward AD and pure ``vmap`` (batching rules) use.
    """
    if not torch.compiler.is_compiling() and _autodiff_transform() is not None:
        return function.apply(*args)
    return op(*args)


def _forward_ad_active():
    return _fwad._current_level >= 0 and torch._C._is_fwd_grad_enabled()


def _register_autograd(name, function, public):
    """Autograd kernel of ``sdu::name``: applies ``function`` when a derivative is needed."""
    op = getattr(_ops, name).default

    def kernel(keyset, *args):
        transform = _autodiff_transform()
        if transform is not None:
            raise RuntimeError(
                f"torch.ops.sdu.{name}: the torch.func {_TRANSFORM_NAMES[transform]} transform is not "
                f"supported on the raw op; call {public}, which supports it"
            )
        if _forward_ad_active() or (torch.is_grad_enabled() and torch._C._any_requires_grad(*args)):
            return function.apply(*args)
        with torch._C._AutoDispatchBelowAutograd():
            return op.redispatch(keyset & torch._C._after_autograd_keyset, *args)

    _lib.impl(name, kernel, "Autograd", with_keyset=True)


class _Function(torch.autograd.Function):
    """Base of the op functions: ``forward`` calls the raw op (which runs below autograd, as
    autograd disables grad and forward grad inside ``forward``); ``vmap`` is the op's batching
    rule (set by ``_register_vmap``)."""

    generate_vmap_rule = False


def _register_vmap(name, rule, function=None):
    """Batching rule of ``sdu::name``, also the ``vmap`` staticmethod of its autograd.Function
    (used when vmap meets a grad/jvp transform). The rule receives per-level unwrapped
    tensors and calls the ops through ``_call``."""
    torch.library.register_vmap(f"sdu::{name}", rule)
    if function is not None:
        function.vmap = staticmethod(rule)


def _to_front(t, bdim, size):
    """t with its vmapped dimension first (expanded when t is not batched)."""
    if bdim is None:
        return t.expand(size, *t.shape)
    return t.movedim(bdim, 0)


def _align_batched(t, bdim, ndim):
    """Batched t (bdim first) viewed with singleton dims so it broadcasts against a
    batched tensor of ``ndim`` per-sample dimensions."""
    t = t.movedim(bdim, 0)
    return t.reshape(t.shape[:1] + (1,) * (ndim - (t.dim() - 1)) + t.shape[1:])


def _acc(t):
    """t in its accumulation dtype (float32 for half precision)."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


def _safe_div(a, b):
    """a / b, 0 where b == 0 (the subgradient the kernels pick at a zero norm)."""
    zero = b == 0
    return torch.where(zero, torch.zeros_like(a), a / torch.where(zero, torch.ones_like(b), b))


# ================================================================ soft_threshold


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


def soft_threshold(x, theta):
    """Soft-thresholding ``sign(x) * max(|x| - theta, 0)``.

    Args:
        x: tensor of any shape, floating dtype.
        theta: 0-dim tensor (or Python number), a vector of length ``x.shape[-1]``,
            or any tensor broadcastable to ``x`` (any floating dtype, same device).
            Negative thresholds follow the same formula.
    Returns:
        Tensor of ``x``'s shape and dtype. Differentiable in ``x`` and ``theta`` to any
        order, in reverse and forward mode; the backward reads only the output (the mask
        is ``y != 0``).
    """
    return _call(_SoftThreshold, _ops.soft_threshold, x, _as_theta(theta, x))


@torch.library.register_fake("sdu::soft_threshold")
def _(x, theta):
    _check_floating(x, "x")
    _check_theta(x, theta)
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def _soft_threshold_linear(y, dx, dtheta):
    """(y != 0) * dx - sign(y) * dtheta: the derivative of y = soft_threshold(x, theta)
    applied to (dx, dtheta), either may be None; shape and dtype of y."""
    out = torch.where(y != 0, dx, torch.zeros_like(dx)) if dx is not None else torch.zeros_like(y)
    if dtheta is not None:
        out = out - torch.sign(y) * dtheta.to(y.dtype)
    return out


class _SoftThreshold(_Function):
    @staticmethod
    def forward(x, theta):
        return _ops.soft_threshold(x, theta)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(output, inputs[1])
        ctx.save_for_forward(output)

    @staticmethod
    def backward(ctx, grad):
        y, theta = ctx.saved_tensors
        grad_x, grad_theta = _call(_SoftThresholdBackward, _ops.soft_threshold_backward, grad, y, theta)
        return (grad_x if ctx.needs_input_grad[0] else None,
                grad_theta if ctx.needs_input_grad[1] else None)

    @staticmethod
    def jvp(ctx, dx, dtheta):
        (y,) = ctx.saved_tensors
        return _soft_threshold_linear(y, dx, dtheta)


_register_autograd("soft_threshold", _SoftThreshold, "sdu_ext.ops.soft_threshold")


def _vmap_soft_threshold(info, in_dims, x, theta):
    x_dim, theta_dim = in_dims
    x = _to_front(x, x_dim, info.batch_size)
    if theta_dim is not None:
        theta = _align_batched(theta, theta_dim, x.dim() - 1)
    return _call(_SoftThreshold, _ops.soft_threshold, x, theta), 0
_register_vmap("soft_threshold", _vmap_soft_threshold, _SoftThreshold)


# ================================================================ soft_threshold_ (in place)


def soft_threshold_(x, theta):
    """In-place :func:`soft_threshold`: overwrites and returns ``x``.

    Stays differentiable (its backward needs only the output, which is ``x`` itself).
    Raises when ``theta`` shares memory with ``x`` or ``x`` has internally overlapping
    memory (an expanded view), as PyTorch's own in-place ops do. Under ``torch.func``
    transforms and forward-mode AD it is computed as ``x.copy_(soft_threshold(x, theta))``.
    """
    theta = _as_theta(theta, x)
    if not torch.compiler.is_compiling() and (
        torch._C._functorch.get_interpreter_stack() or _forward_ad_active()
    ):
        return x.copy_(soft_threshold(x, theta))
    if torch.is_grad_enabled() and (x.requires_grad or theta.requires_grad):
        return _SoftThresholdInplace.apply(x, theta)
    _ops.soft_threshold_(x, theta)
    return x


@torch.library.register_fake("sdu::soft_threshold_")
def _(x, theta):
    _check_floating(x, "x")
    _check_theta(x, theta)


class _SoftThresholdInplace(torch.autograd.Function):
    @staticmethod
    def forward(x, theta):
        _ops.soft_threshold_(x, theta)
        return x

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.mark_dirty(inputs[0])
        ctx.save_for_backward(output, inputs[1])

    @staticmethod
    def backward(ctx, grad):
        y, theta = ctx.saved_tensors
        return _ops.soft_threshold_backward(grad, y, theta)


def _soft_threshold_inplace_view(keyset, x, theta):
    # Ops defined in C++ get no ADInplaceOrView kernel of their own: without this
    # one, x's version counter would not move and autograd could not detect that
    # a tensor saved for backward was overwritten.
    torch.autograd.graph.increment_version(x)
    return _ops.soft_threshold_.default.redispatch(
        keyset & torch._C._after_ADInplaceOrView_keyset, x, theta
    )


_lib.impl("soft_threshold_", _soft_threshold_inplace_view, "ADInplaceOrView", with_keyset=True)


def _soft_threshold_inplace_autograd(keyset, x, theta):
    # The raw mutating op has no derivative of its own: the wrapper provides it.
    transform = _autodiff_transform()
    if transform is not None or _forward_ad_active() or (
        torch.is_grad_enabled() and torch._C._any_requires_grad(x, theta)
    ):
        what = (f"the torch.func {_TRANSFORM_NAMES[transform]} transform" if transform is not None
                else "forward-mode AD" if _forward_ad_active() else "autograd (an input requires grad)")
        raise RuntimeError(
            f"torch.ops.sdu.soft_threshold_: {what} is not supported on the raw in-place op; "
            "call sdu_ext.ops.soft_threshold_, which supports it"
        )
    with torch._C._AutoDispatchBelowAutograd():
        return _ops.soft_threshold_.default.redispatch(keyset & torch._C._after_autograd_keyset, x, theta)


_lib.impl("soft_threshold_", _soft_threshold_inplace_autograd, "Autograd", with_keyset=True)


def _vmap_soft_threshold_(info, in_dims, x, theta):
    x_dim, theta_dim = in_dims
    if x_dim is None:
        raise RuntimeError(
            "soft_threshold_: vmap over theta but not over x would write a batch of results "
            "into one unbatched x; use soft_threshold (out of place)"
        )
    x_front = x.movedim(x_dim, 0)  # a view: the kernel writes into x's memory
    if theta_dim is not None:
        theta = _align_batched(theta, theta_dim, x_front.dim() - 1)
    _ops.soft_threshold_(x_front, theta)
    return None, None
_register_vmap("soft_threshold_", _vmap_soft_threshold_)


# ================================================================ soft_threshold_backward


def _check_soft_threshold_backward(grad, y, theta):
    _check_floating(y, "y")
    _check_floating(grad, "grad")
    _check_same_shape(grad, "grad", y, "y")
    _check_theta(y, theta, "y")


@torch.library.register_fake("sdu::soft_threshold_backward")
def _(grad, y, theta):
    _check_soft_threshold_backward(grad, y, theta)
    return torch.empty_like(y, memory_format=torch.contiguous_format), torch.empty_like(theta)


class _SoftThresholdBackward(_Function):
    """(grad_x, grad_theta) = ((y != 0) grad, sum_to(-sign(y) grad, theta.shape)): linear in
    grad, piecewise constant in y (its derivative in y is 0 almost everywhere), and
    independent of theta's value."""

    @staticmethod
    def forward(grad, y, theta):
        return _ops.soft_threshold_backward(grad, y, theta)

    @staticmethod
    def setup_context(ctx, inputs, output):
        _, y, theta = inputs
        ctx.save_for_backward(y)
        ctx.save_for_forward(y, theta)

    @staticmethod
    def backward(ctx, grad_grad_x, grad_grad_theta):
        (y,) = ctx.saved_tensors
        grad = _soft_threshold_linear(y, grad_grad_x, grad_grad_theta) if ctx.needs_input_grad[0] else None
        return grad, None, None

    @staticmethod
    def jvp(ctx, dgrad, dy, dtheta):
        y, theta = ctx.saved_tensors
        if dgrad is None:
            return torch.zeros_like(y), torch.zeros_like(theta)
        return _call(_SoftThresholdBackward, _ops.soft_threshold_backward, dgrad, y, theta)


_register_autograd("soft_threshold_backward", _SoftThresholdBackward, "sdu_ext.ops.soft_threshold")


def _vmap_soft_threshold_backward(info, in_dims, grad, y, theta):
    grad_dim, y_dim, theta_dim = in_dims
    n = info.batch_size
    grad, y = _to_front(grad, grad_dim, n), _to_front(y, y_dim, n)
    # theta gets a batch dimension in any case: its gradient is one per sample.
    if theta_dim is None:
        theta_b = theta.reshape((1,) * (y.dim() - theta.dim()) + tuple(theta.shape))
        theta_b = theta_b.expand((n,) + tuple(theta_b.shape[1:]))
    else:
        theta_b = _align_batched(theta, theta_dim, y.dim() - 1)
    grad_x, grad_theta = _call(_SoftThresholdBackward, _ops.soft_threshold_backward, grad, y, theta_b)
    per_sample_theta = theta.shape if theta_dim is None else theta.movedim(theta_dim, 0).shape[1:]
    return (grad_x, grad_theta.reshape((n,) + tuple(per_sample_theta))), (0, 0)
_register_vmap("soft_threshold_backward", _vmap_soft_threshold_backward, _SoftThresholdBackward)


# ================================================================ lista_layer


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


def lista_layer(y, xs, W1, W2, theta):
    """One untied LISTA layer ``soft_threshold(y @ W1.T + xs @ W2.T, theta)``.

    Shapes: y (B, m), xs (B, n), W1 (m, m), W2 (m, n), theta broadcastable to (B, m).
    Returns (B, m). The products go to the backend BLAS and are thresholded in
    place; only the output is saved for backward. Differentiable in all five inputs.
    """
    return _call(_ListaLayer, _ops.lista_layer, y, xs, W1, W2, _as_theta(theta, y))


@torch.library.register_fake("sdu::lista_layer")
def _(y, xs, W1, W2, theta):
    _check_lista(y, xs, W1, W2, theta)
    return y.new_empty(y.shape)


class _ListaLayer(_Function):
    @staticmethod
    def forward(y, xs, W1, W2, theta):
        return _ops.lista_layer(y, xs, W1, W2, theta)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs, output)
        ctx.save_for_forward(*inputs, output)

    @staticmethod
    def backward(ctx, grad):
        y, xs, W1, W2, theta, out = ctx.saved_tensors
        need = ctx.needs_input_grad
        gz, grad_theta = _call(_SoftThresholdBackward, _ops.soft_threshold_backward, grad, out, theta)
        return (
            gz @ W1 if need[0] else None,
            gz @ W2 if need[1] else None,
            gz.mT @ y if need[2] else None,
            gz.mT @ xs if need[3] else None,
            grad_theta if need[4] else None,
        )

    @staticmethod
    def jvp(ctx, dy, dxs, dW1, dW2, dtheta):
        y, xs, W1, W2, _, out = ctx.saved_tensors
        terms = [a @ b.mT for a, b in ((dy, W1), (y, dW1), (dxs, W2), (xs, dW2))
                 if a is not None and b is not None]
        dz = sum(terms[1:], terms[0]) if terms else None
        return _soft_threshold_linear(out, dz, dtheta)


_register_autograd("lista_layer", _ListaLayer, "sdu_ext.ops.lista_layer")


def _vmap_lista_layer(info, in_dims, y, xs, W1, W2, theta):
    n = info.batch_size
    y_dim, xs_dim, w1_dim, w2_dim, theta_dim = in_dims
    y, xs = _to_front(y, y_dim, n), _to_front(xs, xs_dim, n)
    B, m = y.shape[1:]
    if theta_dim is not None:
        theta = _align_batched(theta, theta_dim, 2)
    if w1_dim is None and w2_dim is None:
        # Shared weights: one fused call on the (n * B) rows.
        if theta.dim() == 3 or (theta.dim() == 2 and theta.shape[0] != 1):
            theta = theta.expand(n, B, m).reshape(n * B, m)
        out = _call(_ListaLayer, _ops.lista_layer, y.reshape(n * B, m), xs.reshape(n * B, -1), W1, W2, theta)
        return out.reshape(n, B, m), 0
    # Per-sample weights: batched products, then the batched soft threshold.
    W1, W2 = _to_front(W1, w1_dim, n), _to_front(W2, w2_dim, n)
    z = torch.baddbmm(y @ W1.mT, xs, W2.mT)
    return _call(_SoftThreshold, _ops.soft_threshold, z, theta), 0
_register_vmap("lista_layer", _vmap_lista_layer, _ListaLayer)


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
        g_it, g_ref = _call(_ResidualNormsBackward, _ops.residual_norms_backward, grad, iterates, reference, norms)
        return (g_it if ctx.needs_input_grad[0] else None,
                g_ref if ctx.has_reference and ctx.needs_input_grad[1] else None)

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
def _(grad, iterates, reference, norms):
    _check_iterates(iterates, reference)
    L1, B = iterates.shape[:2]
    if tuple(grad.shape) != (L1, B):
        raise RuntimeError(f"grad: expected shape ({L1}, {B}) = (L+1, B), got {_shape(grad)}")
    _check_same_shape(norms, "norms", grad, None)
    g_ref = torch.empty_like(reference) if reference is not None else iterates.new_empty(0)
    return torch.empty_like(iterates, memory_format=torch.contiguous_format), g_ref


class _ResidualNormsBackward(_Function):
    """g_it[l, b] = s[l, b] d[l, b] with s = grad / norms (0 at a zero norm) and
    d = iterates - reference; g_ref[b] = -sum_l g_it[l, b]. Its inputs grad, iterates,
    reference and norms are treated as independent (norms is the saved forward output,
    whose own dependence on the iterates autograd follows through residual_norms)."""

    @staticmethod
    def forward(grad, iterates, reference, norms):
        return _ops.residual_norms_backward(grad, iterates, reference, norms)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.has_reference = inputs[2] is not None
        if not ctx.has_reference:
            ctx.mark_non_differentiable(output[1])
        ctx.save_for_backward(*inputs)
        ctx.save_for_forward(*inputs)

    @staticmethod
    def backward(ctx, grad_g_it, grad_g_ref):
        grad, iterates, reference, norms = ctx.saved_tensors
        need = ctx.needs_input_grad
        dtype = iterates.dtype
        e = _acc(grad_g_it)
        if ctx.has_reference and grad_g_ref is not None:
            e = e - _acc(grad_g_ref).unsqueeze(0)
        n = _acc(norms)
        s = _safe_div(_acc(grad), n)
        out = [None] * 4
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
    def jvp(ctx, d_grad, d_iterates, d_reference, d_norms):
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
        d_g_ref = (-d_g_it.sum(0)).to(iterates.dtype) if ctx.has_reference else None
        return d_g_it.to(iterates.dtype), d_g_ref


_register_autograd("residual_norms_backward", _ResidualNormsBackward, "sdu_ext.ops.residual_norms")


def _vmap_residual_norms_backward(info, in_dims, grad, iterates, reference, norms):
    n = info.batch_size
    g = _merge_batch(grad, in_dims[0], n, 1)
    it = _merge_batch(iterates, in_dims[1], n, 1)
    ref = None if reference is None else _merge_batch(reference, in_dims[2], n, 0)
    nm = _merge_batch(norms, in_dims[3], n, 1)
    g_it, g_ref = _call(_ResidualNormsBackward, _ops.residual_norms_backward, g, it, ref, nm)
    if reference is None:
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
        norms: (L+1, B) residuals r_{l,b}, row 0 = initial point.
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
    return _call(_DescentViolations, _ops.descent_violations, norms, float(eps), form)


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
                                      iterates, reference, float(eps), form)
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
        g_it, g_ref = _call(_ResidualNormsBackward, _ops.residual_norms_backward, g, iterates, reference, norms)
        return (g_it if ctx.needs_input_grad[0] else None,
                g_ref if ctx.has_reference and ctx.needs_input_grad[1] else None, None, None)

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


# ================================================================ min_norm_subgradient


def _check_subgradient(grad, y, alpha):
    _check_floating(grad, "grad")
    _check_floating(y, "y")
    _check_like(y, "y", grad, "grad")
    _check_same_shape(y, "y", grad, "grad")
    if not alpha >= 0:
        raise ValueError(f"alpha: expected a non-negative value, got {alpha:g}")


def min_norm_subgradient(grad, y, alpha):
    """Minimum-norm subgradient of ``g + alpha * ||.||_1`` at ``y``, elementwise.

    ``grad`` is grad g(y) (same shape and dtype as ``y``), ``alpha >= 0`` a float.
    Entry i is ``grad_i + alpha * sign(y_i)`` where ``y_i != 0`` and
    ``shrink(grad_i, alpha)`` where ``y_i == 0``. Differentiable in ``grad`` to any order
    (its derivative is 1 off the dead zone, 0 inside); piecewise constant in ``y``, whose
    derivative is 0.
    """
    return _call(_MinNormSubgradient, _ops.min_norm_subgradient, grad, y, float(alpha))


@torch.library.register_fake("sdu::min_norm_subgradient")
def _(grad, y, alpha):
    _check_subgradient(grad, y, alpha)
    return torch.empty_like(grad, memory_format=torch.contiguous_format)


class _MinNormSubgradient(_Function):
    @staticmethod
    def forward(grad, y, alpha):
        return _ops.min_norm_subgradient(grad, y, alpha)

    @staticmethod
    def setup_context(ctx, inputs, output):
        grad, y, ctx.alpha = inputs
        ctx.save_for_backward(grad, y)
        ctx.save_for_forward(grad, y)

    @staticmethod
    def backward(ctx, grad_out):
        grad, y = ctx.saved_tensors
        return _call(_MinNormSubgradientBackward, _ops.min_norm_subgradient_backward,
                     grad_out, grad, y, ctx.alpha), None, None

    @staticmethod
    def jvp(ctx, d_grad, _d_y, _d_alpha):
        grad, y = ctx.saved_tensors
        if d_grad is None:
            return torch.zeros_like(grad)
        return _call(_MinNormSubgradientBackward, _ops.min_norm_subgradient_backward, d_grad, grad, y, ctx.alpha)


_register_autograd("min_norm_subgradient", _MinNormSubgradient, "sdu_ext.ops.min_norm_subgradient")


def _elementwise_vmap(function, op):
    def rule(info, in_dims, *args):
        n = info.batch_size
        tensors = [_to_front(t, d, n) if isinstance(t, torch.Tensor) else t for t, d in zip(args, in_dims)]
        return _call(function, op, *tensors), 0
    return rule


_register_vmap("min_norm_subgradient", _elementwise_vmap(_MinNormSubgradient, _ops.min_norm_subgradient),
               _MinNormSubgradient)


# ================================================================ min_norm_subgradient_backward


@torch.library.register_fake("sdu::min_norm_subgradient_backward")
def _(grad_out, grad, y, alpha):
    _check_subgradient(grad, y, alpha)
    _check_same_shape(grad_out, "grad_out", grad, "grad")
    return torch.empty_like(grad, memory_format=torch.contiguous_format)


class _MinNormSubgradientBackward(_Function):
    """grad_out * passes(grad, y): linear in grad_out, piecewise constant in grad and y."""

    @staticmethod
    def forward(grad_out, grad, y, alpha):
        return _ops.min_norm_subgradient_backward(grad_out, grad, y, alpha)

    @staticmethod
    def setup_context(ctx, inputs, output):
        _, grad, y, ctx.alpha = inputs
        ctx.save_for_backward(grad, y)
        ctx.save_for_forward(grad, y)

    @staticmethod
    def backward(ctx, grad_grad):
        grad, y = ctx.saved_tensors
        return _call(_MinNormSubgradientBackward, _ops.min_norm_subgradient_backward,
                     grad_grad, grad, y, ctx.alpha), None, None, None

    @staticmethod
    def jvp(ctx, d_grad_out, _d_grad, _d_y, _d_alpha):
        grad, y = ctx.saved_tensors
        if d_grad_out is None:
            return torch.zeros_like(grad)
        return _call(_MinNormSubgradientBackward, _ops.min_norm_subgradient_backward,
                     d_grad_out, grad, y, ctx.alpha)


_register_autograd("min_norm_subgradient_backward", _MinNormSubgradientBackward,
                   "sdu_ext.ops.min_norm_subgradient")
_register_vmap("min_norm_subgradient_backward",
               _elementwise_vmap(_MinNormSubgradientBackward, _ops.min_norm_subgradient_backward),
               _MinNormSubgradientBackward)
