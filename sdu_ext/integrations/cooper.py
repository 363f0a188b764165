"""Descent-constrained training with cooper (https://github.com/cooper-org/cooper).

cooper is an optional extra: ``pip install cooper-optim`` (or ``pip install sdu_ext[cooper]``).

:class:`DescentProblem` is a ready ``cooper.ConstrainedMinimizationProblem``: its loss is
the mean task loss of the model's last layer and every :class:`~sdu_ext.train.DescentConstraints`
group is one inequality constraint ``c_l <= 0`` per constrained layer, with a dense
non-negative multiplier, computed by the fused op. With a
``cooper.optim.SimultaneousOptimizer`` whose dual optimizer is SGD (``maximize=True``), one
``roll`` per batch is exactly a :class:`~sdu_ext.train.PrimalDualTrainer` step with
``dual_every="batch"`` (see :func:`simultaneous_optimizer`).

Under DDP (wrap the model in ``DistributedDataParallel`` and give each rank its shard of the
global batch), :func:`reduce_batch` all-reduces the loss and constraint sums, so the multipliers
step on the global batch's values on every rank and DDP's gradient average is the gradient of
the global Lagrangian.
"""
from typing import Callable, Dict, Optional, Sequence, Union

import torch

try:
    import cooper
except ImportError as e:  # pragma: no cover - exercised by a test that hides cooper
    raise ImportError("sdu_ext.integrations.cooper needs the optional package 'cooper-optim': "
                      "pip install cooper-optim (or pip install 'sdu_ext[cooper]')") from e

from ..checks import check_callable, check_eps, check_instance
from ..train.constraints import DescentConstraints, reduce_batch
from ..train.trainer import squared_error

__all__ = ["DescentProblem", "reduce_batch", "simultaneous_optimizer"]


class DescentProblem(cooper.ConstrainedMinimizationProblem):
    """The constrained training problem of an unrolled network (SPEC section 4) for cooper.

    Args:
        model: ``model(batch[0], return_all=True[, noise=noise])`` returns the iterates
            (L+1, B, ...), unless ``forward`` is given; may be a DDP wrapper.
        constraints: a :class:`DescentConstraints` or a list of them (distinct ``name``).
        num_layers: L (default: ``model.num_layers``, or the wrapped module's).
        loss: ``loss(output (B, ...), batch) -> (B,)`` (default: :func:`squared_error`).
        forward: ``forward(model, batch, noise) -> iterates`` (as for the trainer).
        problem: problem of the gradient residuals (default: ``model.problem`` if any).
        multipliers: initial multipliers, dict group name -> (K,) values >= 0 (default zeros).
        dtype, device: of the multipliers (default float64 on the CPU, as the trainer's).
    Call ``compute_cmp_state(batch, eps=None, noise=None)``: ``batch`` is this rank's part of
    the batch (on the model's device), ``eps`` overrides every group's own. The returned state's
    ``misc`` holds ``"loss"`` (float, the global mean task loss) and ``"values"`` (dict
    group -> (L,) float64 global constraint values of every layer).
    """

    def __init__(self, model: torch.nn.Module, constraints: Union[DescentConstraints, Sequence[DescentConstraints]],
                 *, num_layers: Optional[int] = None, loss: Optional[Callable] = None,
                 forward: Optional[Callable] = None, problem=None,
                 multipliers: Optional[Dict[str, Sequence[float]]] = None, dtype: torch.dtype = torch.float64,
                 device=None):
        super().__init__()
        check_instance(model, "model", torch.nn.Module, "a torch.nn.Module")
        groups = [constraints] if isinstance(constraints, DescentConstraints) else list(constraints)
        for g in groups:
            check_instance(g, "constraints", DescentConstraints, "DescentConstraints")
        names = [g.name for g in groups]
        if not groups or len(set(names)) != len(names):
            raise ValueError(f"constraints: expected one or more groups with distinct names, got {names}")
        inner = getattr(model, "module", model)
        L = num_layers if num_layers is not None else getattr(inner, "num_layers", None)
        if isinstance(L, bool) or not isinstance(L, int) or L < 1:
            raise ValueError(f"num_layers: expected an integer >= 1 (or a model with num_layers), got {L!r}")
        self.model, self.groups, self.num_layers = model, groups, L
        self.loss_fn = check_callable(loss, "loss") or squared_error
        self._forward = check_callable(forward, "forward")
        self.problem = problem if problem is not None else getattr(inner, "problem", None)
        given = dict(multipliers or {})
        unknown = sorted(set(given) - set(names))
        if unknown:
            raise ValueError(f"multipliers: expected group names {names}, got {unknown}")
        self._active = [g.active(L) for g in groups]
        self.group_constraints = {}
        for g, act in zip(groups, self._active):
            init = given.get(g.name)
            init = torch.zeros(len(act)) if init is None else torch.as_tensor(init, dtype=torch.float64)
            if tuple(init.shape) != (len(act),) or not bool(torch.isfinite(init).all()) or bool((init < 0).any()):
                raise ValueError(f"multipliers: expected {len(act)} finite values >= 0 for group {g.name!r}, "
                                 f"got {init.tolist()}")
            multiplier = cooper.multipliers.DenseMultiplier(init=init.to(dtype), dtype=dtype, device=device)
            constraint = cooper.Constraint(cooper.ConstraintType.INEQUALITY, multiplier=multiplier)
            setattr(self, f"descent_{g.name}", constraint)
            self.group_constraints[g.name] = constraint

    @property
    def multiplier_values(self) -> Dict[str, torch.Tensor]:
        """Dict group name -> (K,) current multipliers (detached copies)."""
        return {name: c.multiplier.weight.detach().clone() for name, c in self.group_constraints.items()}

    def _iterates(self, batch, noise):
        if self._forward is not None:
            return self._forward(self.model, batch, noise)
        if noise is None:
            return self.model(batch[0], return_all=True)
        return self.model(batch[0], return_all=True, noise=noise)

    def compute_cmp_state(self, batch, eps: Optional[float] = None, noise=None) -> "cooper.CMPState":
        """The loss and the constraint states of ``batch`` (see the class docstring)."""
        eps_list = [g.eps if eps is None else check_eps(eps) for g in self.groups]
        iterates = self._iterates(batch, noise)
        per_loss = self.loss_fn(iterates[-1], batch)
        if not isinstance(per_loss, torch.Tensor) or tuple(per_loss.shape) != (iterates.shape[1],):
            got = tuple(per_loss.shape) if isinstance(per_loss, torch.Tensor) else type(per_loss).__name__
            raise ValueError(f"loss: expected per-sample losses of shape ({iterates.shape[1]},) = (B,), got {got}")
        evals = [g(iterates, batch, eps=e, problem=self.problem) for g, e in zip(self.groups, eps_list)]
        reduced = reduce_batch(per_loss, evals, self.groups, eps_list, self.num_layers)
        observed = {}
        for g, act, term, value in zip(self.groups, self._active, reduced.terms, reduced.values):
            constraint = self.group_constraints[g.name]
            strict = value[act].to(constraint.multiplier.weight.device, constraint.multiplier.weight.dtype)
            observed[constraint] = cooper.ConstraintState(violation=term[act], strict_violation=strict)
        misc = {"loss": reduced.stats.loss(), "values": {g.name: v for g, v in zip(self.groups, reduced.values)}}
        return cooper.CMPState(loss=reduced.loss, observed_constraints=observed, misc=misc)


def simultaneous_optimizer(problem: DescentProblem, primal_optimizer: torch.optim.Optimizer,
                           lr_dual: float) -> "cooper.optim.SimultaneousOptimizer":
    """cooper's simultaneous primal-dual optimizer with projected SGD ascent of step ``lr_dual``
    on the multipliers (the :class:`~sdu_ext.train.PrimalDualTrainer`'s default dual step)."""
    dual = torch.optim.SGD(problem.dual_parameters(), lr=lr_dual, maximize=True)
    return cooper.optim.SimultaneousOptimizer(cmp=problem, primal_optimizers=primal_optimizer,
                                              dual_optimizers=dual)
