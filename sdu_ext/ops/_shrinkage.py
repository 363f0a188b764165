"""Ops of the soft threshold: ``soft_threshold``, in-place ``soft_threshold_``, their backward
``soft_threshold_backward`` and the fused ``lista_layer``, one block per op (check, wrapper,
fake kernel, autograd, vmap rule)."""
import torch

from ._common import (
    _Function,
    _TRANSFORM_NAMES,
    _align_batched,
    _as_theta,
    _autodiff_transform,
    _call,
    _check_floating,
    _check_like,
    _check_same_shape,
    _check_tensor,
    _forward_ad_active,
    _lib,
    _ops,
    _register_autograd,
    _register_vmap,
    _shape,
    _to_front,
)


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
    _check_tensor(x, "x")
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
    _check_tensor(x, "x")
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
