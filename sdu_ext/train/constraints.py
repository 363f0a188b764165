"""Per-layer descent constraints (SPEC section 3) and their reduction over batches and ranks."""
import numbers
from typing import Callable, List, NamedTuple, Optional, Sequence, Union

import torch

from .. import ops
from ..checks import check_eps
from ..reference import FORMS
from .data import world_and_rank
from .dual import all_reduce_sum, constraint_values

__all__ = ["DescentConstraints", "ConstraintValues", "Stats", "BatchValues", "reduce_batch", "RESIDUALS"]

RESIDUALS = ("distance", "gradient", "subgradient")


class ConstraintValues(NamedTuple):
    """What :class:`DescentConstraints` returns for a batch of B samples and L layers.

    values: (L,) constraint values c_l (<= 0 means satisfied), differentiable.
    per_sample: (L, B) per-sample values (a diagnostic; per-sample ratios for
        ``ratio_of_means``), not differentiable.
    norms: (L+1, B) residuals r_{l,b} (row 0 = initial point), differentiable.
    descending: (L,) fraction of samples with r_l < r_{l-1}, float, not differentiable.
    """

    values: torch.Tensor
    per_sample: torch.Tensor
    norms: torch.Tensor
    descending: torch.Tensor


def _describe(v):
    return f"shape {tuple(v.shape)}" if isinstance(v, torch.Tensor) else type(v).__name__


class DescentConstraints:
    """Descent constraints ``r_l <= (1 - eps) r_{l-1}`` on average, one per layer.

    Args:
        residual: how r_{l,b} is measured on the iterates (L+1, B, m):
            ``"distance"``: ||y_l - y*|| with y* = ``batch[1]``;
            ``"gradient"``: ||grad g(y_l)|| of the smooth part, x = ``batch[0]``;
            ``"subgradient"``: || minimum-norm subgradient of f at y_l ||, x = ``batch[0]``;
            or a callable ``residual(iterates, batch) -> (L+1, B, k)`` residual vectors
            whose norms are taken (e.g. a flattened image gradient for inpainting).
            The gradient forms stack grad g(y_l) of all layers in one batched product
            through ``problem`` (a :class:`~sdu_ext.problems.Lasso`, or given per call).
        form: ``"mean_ratio"``, ``"ratio_of_means"`` or ``"difference"`` (SPEC section 3).
        eps: required decrease in [0, 1).
        layers: 1-based indices of the layers whose constraints enter the Lagrangian
            (None: all L). Values are always returned for every layer.
        problem: optional default problem for the gradient residuals.
        name: label of this group in logs and checkpoints (several groups can be trained
            together, e.g. image and latent gradients).
    Bad values raise ValueError naming the argument.

    Call: ``constraints(iterates, batch, eps=None, problem=None) -> ConstraintValues``,
    computed with the fused :func:`sdu_ext.ops.descent_constraints` op. ``iterates`` is
    (L+1, B, m), or (L+1, B, ...) of any rank with a callable residual; ``eps``
    overrides the group's own for this call.
    """

    def __init__(self, residual: Union[str, Callable] = "distance", form: str = "mean_ratio", eps: float = 0.05,
                 layers: Optional[Sequence[int]] = None, problem=None, name: str = "descent"):
        if not callable(residual) and residual not in RESIDUALS:
            raise ValueError("residual: expected one of " + ", ".join(repr(r) for r in RESIDUALS)
                             + f" or a callable, got {residual!r}")
        if form not in FORMS:
            raise ValueError("form: expected one of " + ", ".join(repr(f) for f in FORMS) + f", got {form!r}")
        self.residual = residual
        self.form = form
        self.eps = check_eps(eps)
        if layers is not None:
            layers = list(layers)
            if not layers or not all(isinstance(l, numbers.Integral) and not isinstance(l, bool) and l >= 1
                                     for l in layers) or len(set(layers)) != len(layers):
                raise ValueError(f"layers: expected distinct 1-based layer indices (>= 1), got {layers!r}")
            layers = sorted(int(l) for l in layers)
        self.layers = layers
        self.problem = problem
        if not isinstance(name, str) or not name:
            raise ValueError(f"name: expected a non-empty string, got {name!r}")
        self.name = name

    def __repr__(self):
        res = self.residual if isinstance(self.residual, str) else getattr(self.residual, "__name__", "callable")
        return (f"DescentConstraints(residual={res!r}, form={self.form!r}, eps={self.eps:g}, "
                f"layers={self.layers}, name={self.name!r})")

    def active(self, num_layers: int) -> List[int]:
        """0-based indices of the constrained layers for a network of ``num_layers`` layers."""
        if self.layers is None:
            return list(range(num_layers))
        bad = [l for l in self.layers if l > num_layers]
        if bad:
            raise ValueError(f"layers: expected indices in 1..{num_layers} (the network has {num_layers} "
                             f"layers), got {self.layers}")
        return [l - 1 for l in self.layers]

    def residuals(self, iterates, batch, problem=None):
        """``(vectors (L+1, B, k), reference (B, k) or None)`` whose difference norms are r_{l,b}."""
        if callable(self.residual):
            vectors = self.residual(iterates, batch)
            if not isinstance(vectors, torch.Tensor) or vectors.dim() != 3 or vectors.shape[:2] != iterates.shape[:2]:
                raise ValueError(f"residual: expected the callable to return (L+1, B, k) = "
                                 f"({iterates.shape[0]}, {iterates.shape[1]}, k) residual vectors, "
                                 f"got {_describe(vectors)}")
            return vectors, None
        if self.residual == "distance":
            return iterates, batch[1]
        problem = self.problem if self.problem is not None else problem
        if problem is None:
            raise ValueError(f"problem: residual={self.residual!r} needs a problem with smooth_grad "
                             "(e.g. sdu_ext.problems.Lasso), got None")
        L1, B, m = iterates.shape
        x = batch[0]
        y = iterates.reshape(L1 * B, m)
        xr = x.unsqueeze(0).expand(L1, *x.shape).reshape(L1 * B, x.shape[-1])
        g = problem.subgradient(y, xr) if self.residual == "subgradient" else problem.smooth_grad(y, xr)
        return g.reshape(L1, B, m), None

    def __call__(self, iterates: torch.Tensor, batch, eps: Optional[float] = None,
                 problem=None) -> ConstraintValues:
        if not isinstance(iterates, torch.Tensor) or iterates.dim() != 3 and not (
                callable(self.residual) and iterates.dim() > 3):
            want = "(L+1, B, ...)" if callable(self.residual) else "(L+1, B, m)"
            raise ValueError(f"iterates: expected a stacked tensor {want}, got {_describe(iterates)}")
        eps = self.eps if eps is None else check_eps(eps)
        vectors, reference = self.residuals(iterates, batch, problem)
        values, per_sample, norms = ops.descent_constraints(vectors, reference, eps, self.form, return_norms=True)
        with torch.no_grad():
            descending = (norms[1:] < norms[:-1]).to(torch.float64).mean(dim=1)
        return ConstraintValues(values, per_sample, norms, descending)


class Stats:
    """Sums over samples from which the task loss and every group's constraint values
    follow exactly: adding the sums of several batches, or all-reducing them across
    ranks, gives the values of the union (the global batch, or the whole data set).

    Layout of the float64 vector ``sums``: [count, loss_sum] then for each group
    [per-sample sum (L), residual sum (L+1), descending count (L)].
    The sums and every tensor derived from them stay on their device (no host read); only
    :attr:`count` and :meth:`loss` return Python floats.
    """

    def __init__(self, num_layers, groups, device="cpu", sums=None):
        self.L = num_layers
        self.groups = list(groups)
        # ``sums``: a vector of that layout to wrap (not copied); default zeros
        self.sums = torch.zeros(2 + len(self.groups) * (3 * num_layers + 1), dtype=torch.float64, device=device) \
            if sums is None else sums

    def add(self, loss, evals=()):
        """Add a batch: per-sample losses (B,) (or None) and one ConstraintValues per group."""
        s, L = self.sums, self.L
        with torch.no_grad():
            if loss is not None:
                s[0] += loss.shape[0]
                s[1] += loss.detach().to(torch.float64).sum()
            else:
                s[0] += evals[0].per_sample.shape[1]
            for i, ev in enumerate(evals):
                o = 2 + i * (3 * L + 1)
                s[o:o + L] += ev.per_sample.to(torch.float64).sum(dim=1)
                s[o + L:o + 2 * L + 1] += ev.norms.detach().to(torch.float64).sum(dim=1)
                s[o + 2 * L + 1:o + 3 * L + 1] += (ev.norms[1:] < ev.norms[:-1]).sum(dim=1).to(torch.float64)
        return self

    def merge(self, other):
        self.sums += other.sums
        return self

    def all_reduce(self):
        all_reduce_sum(self.sums)
        return self

    @property
    def count(self):
        return float(self.sums[0])

    def mean_loss(self) -> torch.Tensor:
        """The mean task loss, a 0-d float64 tensor on the device of the sums."""
        return self.sums[1] / self.sums[0]

    def loss(self):
        return float(self.mean_loss())

    def _group(self, i):
        L = self.L
        o = 2 + i * (3 * L + 1)
        s = self.sums
        return s[o:o + L], s[o + L:o + 2 * L + 1], s[o + 2 * L + 1:o + 3 * L + 1]

    def values(self, i, eps):
        """Constraint values (L,) float64 of group i at ``eps``."""
        sample_sum, norm_sum, _ = self._group(i)
        return constraint_values(self.groups[i].form, eps, self.sums[0], sample_sum, norm_sum)

    def descending(self, i):
        return self._group(i)[2] / self.sums[0]

    def norm_sums(self, i):
        return self._group(i)[1]

    def sample_sums(self, i):
        return self._group(i)[0]


class BatchValues(NamedTuple):
    """A (global) batch's task loss and constraint values, see :func:`reduce_batch`.

    stats: the all-reduced :class:`Stats` of the batch.
    loss: differentiable scalar whose gradient, averaged over the ranks (as DDP does),
        is the gradient of the global mean task loss (alone: the batch mean).
    terms: per group, differentiable (L,) whose rank-averaged gradient is that of the
        global constraint values (alone: the op's values).
    values: per group, the global constraint values (L,) float64 on the device (not differentiable).
    """

    stats: "Stats"
    loss: torch.Tensor
    terms: List[torch.Tensor]
    values: List[torch.Tensor]


def reduce_batch(per_loss, evals, groups, eps, num_layers=None) -> BatchValues:
    """Reduce this rank's part of a global batch over the ranks of the process group (DDP).

    Args:
        per_loss: (B_local,) per-sample task losses (differentiable).
        evals: one :class:`ConstraintValues` per group, of this rank's samples.
        groups: the :class:`DescentConstraints` of ``evals``.
        eps: per group, the eps of the values.
        num_layers: L (default: from ``evals``; required without groups).
    The sums of every rank are all-reduced once. Under DDP each differentiable term is the
    global value as a function of this rank's sums (the others' detached), times the world
    size W, so that DDP's gradient average is the gradient of the global value.
    """
    L = num_layers if num_layers is not None else evals[0].values.shape[0]
    stats = Stats(L, groups, per_loss.device).add(per_loss, evals).all_reduce()
    values = [stats.values(i, e) for i, e in enumerate(eps)]
    W = world_and_rank()[0]
    if W == 1:
        return BatchValues(stats, per_loss.mean(), [ev.values for ev in evals], values)

    def tie(total, local):
        return total.to(local.device, local.dtype) + (local - local.detach())

    terms = []
    for i, (g, ev, e) in enumerate(zip(groups, evals, eps)):
        samples = tie(stats.sample_sums(i), ev.values * ev.norms.shape[1])
        norms = tie(stats.norm_sums(i), ev.norms.sum(dim=1))
        terms.append(W * constraint_values(g.form, e, stats.sums[0], samples, norms))
    scale = (W / stats.sums[0]).to(per_loss.dtype)  # a tensor: no host read of the count
    return BatchValues(stats, per_loss.sum() * scale, terms, values)
