"""Fused ops of the ``sdu`` namespace: Python entry points, fake kernels, autograd and vmap rules.

Schemas and CPU/CUDA kernels are defined in C++ (csrc/). The package is laid out one
op per block (``_shrinkage.py``, ``_descent.py``, ``_subgradient.py``; shared machinery in
``_common.py``): the argument check, the documented wrapper, the fake (meta) kernel used by
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
from ._descent import descent_constraints, descent_violations, residual_norms
from ._shrinkage import lista_layer, soft_threshold, soft_threshold_
from ._subgradient import min_norm_subgradient

__all__ = [
    "soft_threshold",
    "soft_threshold_",
    "lista_layer",
    "residual_norms",
    "descent_violations",
    "descent_constraints",
    "min_norm_subgradient",
]
