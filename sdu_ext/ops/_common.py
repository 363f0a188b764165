"""Machinery shared by the op blocks of :mod:`sdu_ext.ops`: argument-check helpers, the
dispatch between the raw op and its ``autograd.Function``, the registration of autograd
kernels and vmap rules, and small tensor helpers for batching rules and derivative formulas."""
import numbers

import torch
import torch.autograd.forward_ad as _fwad
from torch._C._functorch import TransformType

from .. import _C  # noqa: F401  (registers the schemas)

_ops = torch.ops.sdu
_FLOATING = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
_lib = torch.library.Library("sdu", "IMPL")


def _shape(t):
    s = tuple(getattr(t, "shape", t))
    return "(" + ", ".join(str(v) for v in s) + ("," if len(s) == 1 else "") + ")"


def _check_floating(t, name):
    _check_tensor(t, name)
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


def _as_float(value, name, expected):
    """``float(value)`` of a Python/numpy real number (not bool) or a one-element tensor;
    ValueError "``name``: expected ``expected``, got <value>" for anything else (None, a
    string, a vector). The range check stays with the op's own check."""
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, torch.Tensor) and value.numel() == 1 and value.dtype != torch.bool \
            and not value.is_complex():
        return float(value)
    got = f"a tensor of shape {_shape(value)}" if isinstance(value, torch.Tensor) else repr(value)
    raise ValueError(f"{name}: expected {expected}, got {got}")


def _check_tensor(t, name):
    """TypeError naming ``name`` unless ``t`` is a tensor (before its attributes are read)."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a tensor, got {type(t).__name__}")


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
