"""The differentiable part of a training step: forward, per-sample task loss, constraint values
and the Lagrangian, as one function the trainer can hand to ``torch.compile``."""
from contextlib import contextmanager, nullcontext
from typing import Callable, List, NamedTuple, Optional, Sequence

import torch

from ..checks import choices
from .config import COMPILE_MODES
from .constraints import DescentConstraints, Stats, reduce_batch
from .data import check_targets

__all__ = ["Objective", "StepValues", "squared_error", "matmul_precision", "RECOMPILE_LIMIT"]

RECOMPILE_LIMIT = 256


@contextmanager
def matmul_precision(precision: Optional[str]):
    """``torch.set_float32_matmul_precision(precision)`` inside the block, the previous setting
    restored after it; None changes nothing."""
    if precision is None:
        yield
        return
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(precision)
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(before)


def squared_error(output: torch.Tensor, batch) -> torch.Tensor:
    """The LISTA task loss per sample: ``1/2 ||output_b - batch[1]_b||^2``, (B,).

    ``output`` (B, ...) is a layer's output, ``batch[1]`` the reference (e.g. y*), same shape.
    """
    return 0.5 * (output - batch[1]).pow(2).flatten(1).sum(dim=1)


class StepValues(NamedTuple):
    """What :meth:`Objective.step_values` returns for one batch.

    iterates: (L+1, B, ...) the iterates of the forward (float32 or wider).
    stats: the batch's :class:`~sdu_ext.train.constraints.Stats` (all-reduced under DDP).
    values: per group, the global constraint values (L,) float64 (not differentiable).
    lagrangian: differentiable scalar whose gradient (rank-averaged under DDP) is the Lagrangian's.
    value: the Lagrangian's value, a 0-d float64 tensor (not differentiable).
    """

    iterates: torch.Tensor
    stats: Stats
    values: List[torch.Tensor]
    lagrangian: torch.Tensor
    value: torch.Tensor


class Objective:
    """Forward -> per-sample loss -> constraint values -> Lagrangian of one batch.

    Args:
        loss: ``loss(output (B, ...), batch) -> (B,)`` (default :func:`squared_error`).
        forward: ``forward(model, batch, noise) -> iterates`` or None (``model(batch[0],
            return_all=True[, noise=noise])``).
        groups: the :class:`DescentConstraints` groups.
        problem: the problem of the gradient residuals (or None).
        autocast: None or the name of a torch dtype to run the forward under autocast.
        compile: one of :data:`COMPILE_MODES`: None runs eagerly; a mode compiles
            :meth:`step_values` (forward, loss, constraints, Lagrangian, and through AOTAutograd
            their backward) with ``torch.compile``. Random draws keep eager's generator
            streams (inductor's ``fallback_random``), so a compiled step draws the same noise.
            ``"reduce-overhead"`` and ``"max-autotune"`` replay CUDA graphs on a GPU; the outputs
            that outlive a step are then copied out of the graph's memory.
    Every Objective compiles the same function: dynamo's recompile limit is raised to at least
    :data:`RECOMPILE_LIMIT` (one cache entry per trainer, layer-wise stage and eps), so that a
    process training many compiled networks does not fall back to eager after the 8th.
    """

    def __init__(self, loss: Optional[Callable], forward: Optional[Callable], groups: Sequence[DescentConstraints],
                 problem=None, autocast: Optional[str] = None,
                 compile: Optional[str] = None):
        if compile not in COMPILE_MODES:
            raise ValueError(f"compile: expected one of {choices(COMPILE_MODES)}, got {compile!r}")
        self.loss_fn = squared_error if loss is None else loss
        self.forward = forward
        self.groups = list(groups)
        self.problem = problem
        self.autocast = autocast
        self.mode = compile
        self._step_values = self._eager_step_values
        self.cudagraphs = False  # whether the compiled step replays CUDA graphs (on a GPU)
        if compile is not None:
            import torch._inductor  # noqa: F401  (list_mode_options)
            options = dict(torch._inductor.list_mode_options(compile), fallback_random=True)
            self.cudagraphs = bool(options.get("triton.cudagraphs"))
            import torch._dynamo
            limits = torch._dynamo.config
            limits.recompile_limit = max(limits.recompile_limit, RECOMPILE_LIMIT)
            limits.accumulated_recompile_limit = max(limits.accumulated_recompile_limit, 4 * RECOMPILE_LIMIT)
            self._step_values = torch.compile(self._eager_step_values, options=options)

    def iterates(self, model, batch, noise) -> torch.Tensor:
        """The iterates (L+1, B, ...); under ``autocast`` the forward runs in that dtype and the
        iterates come back in float32 (or wider), where the loss and constraints are taken."""
        autocast = self.autocast
        device_type = batch[0].device.type if isinstance(batch[0], torch.Tensor) else "cpu"
        with torch.autocast(device_type, dtype=getattr(torch, autocast)) if autocast else nullcontext():
            if self.forward is not None:
                it = self.forward(model, batch, noise)
            elif noise is None:
                it = model(batch[0], return_all=True)
            else:
                it = model(batch[0], return_all=True, noise=noise)
        if not isinstance(it, torch.Tensor) or it.dim() < 3:
            got = tuple(it.shape) if isinstance(it, torch.Tensor) else type(it).__name__
            raise ValueError(f"model: expected the forward pass to return stacked iterates (L+1, B, ...), got {got}")
        if autocast is not None and it.is_floating_point():
            it = it.to(torch.promote_types(it.dtype, torch.float32))
        return it

    def per_sample_loss(self, output, batch) -> torch.Tensor:
        """The task loss per sample (B,), its shape checked."""
        distance = any(g.residual == "distance" for g in self.groups)
        if self.loss_fn is squared_error or distance:
            check_targets(batch, output, same_dtype=distance)
        loss = self.loss_fn(output, batch)
        if not isinstance(loss, torch.Tensor) or tuple(loss.shape) != (output.shape[0],):
            got = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
            raise ValueError(f"loss: expected per-sample losses of shape ({output.shape[0]},) = (B,), got {got}")
        return loss

    def evaluate_groups(self, iterates, batch, eps, grad: bool):
        """One :class:`~sdu_ext.train.ConstraintValues` per group (detached unless ``grad``)."""
        if not self.groups:
            return []
        if grad:
            return [g(iterates, batch, eps=e, problem=self.problem) for g, e in zip(self.groups, eps)]
        with torch.no_grad():
            it = iterates.detach()
            return [g(it, batch, eps=e, problem=self.problem) for g, e in zip(self.groups, eps)]

    def step_values(self, model, batch, noise, eps: Sequence[float], duals, index: Sequence[torch.Tensor],
                    stage: Optional[int], constrained: bool, num_layers: int) -> StepValues:
        """The batch's :class:`StepValues`: task loss of layer ``stage`` (None: the last), plus
        in ``constrained`` mode ``sum_l nu_l c_l`` over the constrained layers of every group,
        ``duals`` being the groups' :class:`~sdu_ext.train.Multiplier` s and ``index`` per group
        the (K,) int64 0-based indices of its constrained layers, on the training device."""
        nus = [(d.value, d.slack, d.resilient_cost if d.resilient else None) for d in duals] if constrained else []
        out = self._step_values(model, batch, noise, list(eps), nus, list(index), stage, constrained, num_layers)
        iterates, sums, values, lagrangian, value = out
        if self.cudagraphs:
            # a CUDA graph's next replay overwrites its outputs: the small ones outlive the step
            # (epoch sums, the dual step's values, the finiteness records of check_every > 1)
            sums, value, values = sums.clone(), value.clone(), [c.clone() for c in values]
        stats = Stats(num_layers, self.groups, sums=sums)
        return StepValues(iterates, stats, values, lagrangian, value)

    def _eager_step_values(self, model, batch, noise, eps, nus, index, stage, constrained, num_layers):
        iterates = self.iterates(model, batch, noise)
        out = iterates[stage] if stage is not None else iterates[-1]
        per_loss = self.per_sample_loss(out, batch)
        evals = self.evaluate_groups(iterates, batch, eps, grad=constrained)
        stats, lagrangian, terms, c_all = reduce_batch(per_loss, evals, self.groups, eps, num_layers)
        value = stats.mean_loss()  # the Lagrangian's value, a 0-d float64 tensor
        for c, c_value, idx, (nu, u, cost) in zip(terms, c_all, index, nus):
            lagrangian = lagrangian + (nu.to(c.device, c.dtype) * c[idx]).sum()
            value = value + (nu * (c_value[idx] - u)).sum()
            if cost is not None:
                value = value + 0.5 * cost * u.pow(2).sum()
        return iterates, stats.sums, c_all, lagrangian, value
