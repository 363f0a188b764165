"""The primal optimizer of :class:`~sdu_ext.train.PrimalDualTrainer`: ``torch.optim`` by name, fused
where the device supports it."""
from typing import Any, Dict, Sequence

import torch

__all__ = ["FUSED", "build_optimizer", "fused_supported"]

# Optimizers that default to their fused (one kernel for all parameters) implementation.
FUSED = ("Adam", "AdamW")
# Arguments that choose an implementation or a variant the fused kernel lacks: given any, the
# caller's choice stands.
_IMPLEMENTATION = ("fused", "foreach", "differentiable")
_FUSED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _fused_devices():
    try:
        from torch.utils._foreach_utils import _get_fused_kernels_supported_devices
    except ImportError:  # pragma: no cover - older torch
        return ("cuda",)
    return tuple(_get_fused_kernels_supported_devices())


def fused_supported(params: Sequence) -> bool:
    """True when every parameter (``params``: tensors, or parameter-group dicts) is a dense floating
    tensor (float16/bfloat16/float32/float64) on a device with fused optimizer kernels (CPU and CUDA
    among them), all on one device."""
    devices = _fused_devices()
    params = [t for p in params for t in (p["params"] if isinstance(p, dict) else [p])]
    return bool(params) and len({p.device for p in params}) == 1 and all(
        p.device.type in devices and p.dtype in _FUSED_DTYPES and not p.is_sparse for p in params)


def build_optimizer(name: str, params: Sequence, lr: float,
                    kwargs: Dict[str, Any]) -> torch.optim.Optimizer:
    """``torch.optim.<name>(params, lr=lr, **kwargs)`` (``params``: tensors or parameter-group
    dicts, as torch.optim takes them); ``Adam`` and ``AdamW`` get ``fused=True``
    when :func:`fused_supported` and ``kwargs`` names none of fused/foreach/differentiable.

    The fused step computes the same update in one kernel with another order of operations: from
    the same state, its parameters agree with the single-tensor loop's to a few units in the last
    place of the largest of the old and new values, per step: 1-2 ulps for Adam without weight
    decay on unit-scale values, at most 6 (AdamW with weight decay, float32) over scales spanning
    4 decades; python_tests/test_throughput.py bounds it by 8. Over a run the trajectories
    drift apart like any two roundings do. ``optimizer_kwargs={"fused": False}`` keeps the loop."""
    cls = getattr(torch.optim, name)
    params = [dict(p, params=list(p["params"])) if isinstance(p, dict) else p for p in params]
    kw = dict(kwargs)
    if name in FUSED and not any(k in kw for k in _IMPLEMENTATION) and fused_supported(params):
        kw["fused"] = True
    return cls(params, lr=lr, **kw)
