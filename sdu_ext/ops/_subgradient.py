"""``min_norm_subgradient`` and its backward op, one block per op (check, wrapper, fake kernel,
autograd, vmap rule)."""
import math

import torch

from ._common import (
    _Function,
    _as_float,
    _call,
    _check_floating,
    _check_like,
    _check_same_shape,
    _ops,
    _register_autograd,
    _register_vmap,
    _to_front,
)


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
    derivative is 0. ``alpha`` must be finite (this wrapper's check: the raw op
    ``torch.ops.sdu.min_norm_subgradient`` only rejects a negative or NaN alpha).
    """
    alpha = _as_float(alpha, "alpha", "a non-negative value")
    if alpha == math.inf:
        raise ValueError("alpha: expected a finite value, got inf")
    return _call(_MinNormSubgradient, _ops.min_norm_subgradient, grad, y, alpha)


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
