"""The dual side of primal-dual training (SPEC section 4).

- :func:`constraint_values`: the one formula that turns per-layer sums over samples into
  the constraint values of each form (used for batches, data sets, and DDP ranks alike).
- :func:`all_reduce_sum`: sums a tensor over the ranks of a DDP job (no-op alone).
- :class:`Multiplier`: the non-negative multipliers of one constraint group, with their
  projected dual-ascent step, the optional resilient slack, checkpoint state, a finiteness
  check and log columns; it lives on one device (the CPU unless moved with ``to``).
"""
import copy
from typing import Callable, Dict, Optional, Sequence, Tuple, Union

import torch

from ..checks import check_eps, is_real
from ..reference import FORMS, RATIO_FLOOR
from .data import world_and_rank

__all__ = ["constraint_values", "all_reduce_sum", "Multiplier", "group_multipliers"]


def constraint_values(form: str, eps: float, count, sample_sums: torch.Tensor,
                      norm_sums: torch.Tensor) -> torch.Tensor:
    """Constraint values (L,) of ``count`` samples from their per-layer sums.

    Args:
        form: ``"mean_ratio"``, ``"difference"`` or ``"ratio_of_means"`` (SPEC section 3).
        eps: required decrease in [0, 1) (used by ``ratio_of_means``; the other forms
            carry it inside their per-sample values).
        count: number of samples (a number or a 0-d tensor).
        sample_sums: (L,) sum over samples of the per-sample values
            (``r_l / max(r_{l-1}, floor) - (1 - eps)``, resp. ``r_l - (1 - eps) r_{l-1}``).
        norm_sums: (L+1,) sum over samples of the residuals r_{l,b} (row 0: initial point).
    Returns ``sample_sums / count`` for ``mean_ratio`` and ``difference``, and
    ``mean_l / max(mean_{l-1}, RATIO_FLOOR) - (1 - eps)`` for ``ratio_of_means``, in the
    dtype of the sums; differentiable in the sums (sums of one batch or rank with the
    other contributions detached give the gradient of the global value).
    """
    if form == "ratio_of_means":
        eps = check_eps(eps)
        prev = (norm_sums[:-1] / count).clamp_min(RATIO_FLOOR)
        return (norm_sums[1:] / count) / prev - (1.0 - eps)
    if form in FORMS:
        return sample_sums / count
    raise ValueError("form: expected one of " + ", ".join(repr(f) for f in FORMS) + f", got {form!r}")


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` in place over the ranks of the initialised process group (if more
    than one) and return it. Sums (not constraint values) are what add across ranks."""
    if world_and_rank()[0] > 1:
        torch.distributed.all_reduce(tensor)
    return tensor


OptimizerFactory = Callable[[Sequence[torch.Tensor]], torch.optim.Optimizer]


class Multiplier:
    """Non-negative multipliers nu (K,) float64 of K constraints, one per constrained layer.

    Args:
        size: K (or None when ``init`` is given).
        init: initial values (K,), each >= 0 and finite (default zeros).
        lr: step size of the default ascent ``nu <- max(0, nu + lr * c)`` (>= 0); also the
            step of the resilient slack.
        optimizer: None for the default ascent, or a factory ``optimizer([nu]) ->
            torch.optim.Optimizer`` (e.g. ``functools.partial(torch.optim.Adam, lr=1e-2)``):
            every :meth:`step` sets ``nu.grad = -c`` (ascent as minimisation), steps the
            optimizer and projects nu onto ``>= 0``.
        resilient: relax each constraint to ``c <= u`` with a slack ``u >= 0`` paying
            ``resilient_cost / 2 * u^2``: nu ascends on ``c - u`` and u takes the projected
            gradient step ``u <- max(0, u - lr * (resilient_cost * u - nu))`` (with the
            multipliers before the step).
        layers: 1-based indices of the constrained layers, for the log columns (default 1..K).
    Invalid values raise ValueError naming the argument.
    """

    def __init__(self, size: Optional[int] = None, *, init: Union[torch.Tensor, Sequence[float], None] = None,
                 lr: float = 1e-3, optimizer: Optional[OptimizerFactory] = None, resilient: bool = False,
                 resilient_cost: float = 1.0, layers: Optional[Sequence[int]] = None):
        if init is not None:
            try:
                init = torch.as_tensor(init, dtype=torch.float64).detach().to("cpu", copy=True)
            except (TypeError, ValueError, RuntimeError):
                raise ValueError(f"init: expected a sequence of numbers >= 0, got {type(init).__name__}") from None
            if init.dim() != 1 or (size is not None and init.shape[0] != size):
                raise ValueError(f"init: expected shape ({size if size is not None else 'K'},), "
                                 f"got {tuple(init.shape)}")
            if not bool(torch.isfinite(init).all()) or bool((init < 0).any()):
                raise ValueError(f"init: expected finite multipliers >= 0, got {init.tolist()}")
            size = init.shape[0]
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise ValueError(f"size: expected an integer >= 0 (or init), got {size!r}")
        if not is_real(lr) or not lr >= 0 or lr == float("inf"):
            raise ValueError(f"lr: expected a finite number >= 0, got {lr!r}")
        if not is_real(resilient_cost) or not 0 < resilient_cost < float("inf"):
            raise ValueError(f"resilient_cost: expected a positive finite number, got {resilient_cost!r}")
        if optimizer is not None and not callable(optimizer):
            raise ValueError(f"optimizer: expected a factory optimizer(params) or None, got {type(optimizer).__name__}")
        layers = list(range(1, size + 1)) if layers is None else [int(l) for l in layers]
        if len(layers) != size:
            raise ValueError(f"layers: expected {size} layer indices, got {layers}")
        self.size, self.lr, self.layers = size, float(lr), layers
        self.resilient, self.resilient_cost = bool(resilient), float(resilient_cost)
        self._value = init if init is not None else torch.zeros(size, dtype=torch.float64)
        self._slack = torch.zeros(size, dtype=torch.float64)
        self.optimizer = None
        if optimizer is not None:
            self.optimizer = optimizer([self._value])
            if not isinstance(self.optimizer, torch.optim.Optimizer):
                raise ValueError(f"optimizer: expected the factory to return a torch.optim.Optimizer, "
                                 f"got {type(self.optimizer).__name__}")

    def __repr__(self):
        return f"Multiplier(size={self.size}, values={self._value.tolist()}, resilient={self.resilient})"

    def to(self, device) -> "Multiplier":
        """Move the multipliers and slacks (and the dual optimizer's state) to ``device``, in
        place: the steps then run there, without host reads. Returns self."""
        device = torch.device(device)
        if self._value.device != device:
            self._value.data = self._value.data.to(device)  # the optimizer keeps this tensor
            self._slack = self._slack.to(device)
            if self.optimizer is not None:  # its load_state_dict moves the state to the parameter
                self.optimizer.load_state_dict(copy.deepcopy(self.optimizer.state_dict()))
        return self

    @property
    def value(self) -> torch.Tensor:
        """The multipliers (K,) float64, on the CPU unless moved by :meth:`to` (do not modify in place)."""
        return self._value

    @property
    def slack(self) -> torch.Tensor:
        """The resilient slacks (K,) float64 (zeros unless ``resilient``)."""
        return self._slack

    def step(self, c: torch.Tensor) -> None:
        """One projected ascent step on the constraint values ``c`` (K,) (any float dtype
        and device; the global values, identical on every rank); no host read."""
        c = c.detach().to(self._value.device, torch.float64)
        if tuple(c.shape) != (self.size,):
            raise ValueError(f"c: expected constraint values of shape ({self.size},), got {tuple(c.shape)}")
        nu, u = self._value, self._slack
        target = c - u if self.resilient else c
        if self.optimizer is None:
            self._value = (nu + self.lr * target).clamp_min(0.0)
        else:
            nu_before = nu.clone()
            nu.grad = -target
            self.optimizer.step()
            nu.grad = None
            with torch.no_grad():
                nu.clamp_(min=0.0)
            nu = nu_before
        if self.resilient:
            self._slack = (u - self.lr * (self.resilient_cost * u - nu)).clamp_min(0.0)

    def snapshot(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(value, slack)`` as they are now, unchanged by later steps (a copy only where a
        dual optimizer steps in place); no host read."""
        value = self._value if self.optimizer is None else self._value.detach().clone()
        return value, self._slack

    def nonfinite(self, value: Optional[torch.Tensor] = None,
                  slack: Optional[torch.Tensor] = None) -> Optional[Tuple[str, int, float]]:
        """None when every multiplier and slack (the current ones, or a :meth:`snapshot`'s
        ``value``, ``slack``) is finite, else ``(what, layer, value)`` of the first bad one
        (``what``: ``"multiplier nu"`` or ``"resilient slack u"``, 1-based layer)."""
        value = self._value if value is None else value
        slack = self._slack if slack is None else slack
        for what, t in (("multiplier nu", value), ("resilient slack u", slack)):
            bad = torch.nonzero(~torch.isfinite(t)).flatten().tolist()
            if bad:
                return what, self.layers[bad[0]], float(t[bad[0]])
        return None

    def log_columns(self, prefix: str = "") -> Dict[str, float]:
        """``{prefix}nu_<layer>`` (and ``{prefix}u_<layer>`` when resilient) -> value."""
        row = {f"{prefix}nu_{l}": v for l, v in zip(self.layers, self._value.tolist())}
        if self.resilient:
            row.update({f"{prefix}u_{l}": v for l, v in zip(self.layers, self._slack.tolist())})
        return row

    def all_reduce(self) -> "Multiplier":
        """Average the multipliers and slacks over the ranks of a DDP job (no-op alone), for
        steps taken on per-rank constraint values. The trainer steps on global values, so its
        ranks already agree."""
        world = world_and_rank()[0]
        if world > 1:
            for t in (self._value, self._slack):
                all_reduce_sum(t).div_(world)
        return self

    def state_dict(self) -> dict:
        """``{"value", "slack"[, "optimizer"]}`` (tensors are copies)."""
        state = {"value": self._value.detach().clone(), "slack": self._slack.clone()}
        if self.optimizer is not None:
            state["optimizer"] = copy.deepcopy(self.optimizer.state_dict())  # a snapshot, not live tensors
        return state

    def load_state_dict(self, state: dict) -> None:
        """Restore what :meth:`state_dict` returned (values are copied in place)."""
        for key, t in (("value", self._value), ("slack", self._slack)):
            got = state.get(key)
            if not isinstance(got, torch.Tensor) or tuple(got.shape) != (self.size,):
                raise ValueError(f"state: expected {key!r} of shape ({self.size},), "
                                 f"got {tuple(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__}")
            with torch.no_grad():
                t.copy_(got.to(torch.float64))
        if self.optimizer is not None and "optimizer" in state:
            self.optimizer.load_state_dict(state["optimizer"])


def group_multipliers(names, layers, given, lr, resilient, resilient_cost):
    """One :class:`Multiplier` per constraint group: ``names`` (group names), ``layers`` (per
    group, the 1-based constrained layers); ``given`` (None or a dict name -> initial values
    (K,) or a ready Multiplier of size K, which keeps its own step) overrides the default of
    zeros with step ``lr`` (resilient with ``resilient_cost`` when ``resilient``)."""
    given = dict(given or {})
    unknown = sorted(set(given) - set(names))
    if unknown:
        raise ValueError(f"multipliers: expected group names {names}, got {unknown}")
    duals = []
    for name, active in zip(names, layers):
        init = given.get(name)
        if isinstance(init, Multiplier):
            if init.size != len(active):
                raise ValueError(f"multipliers: expected a Multiplier of size {len(active)} for group "
                                 f"{name!r} (layers {active}), got size {init.size}")
            init.layers = list(active)
            duals.append(init)
            continue
        try:
            duals.append(Multiplier(len(active), init=init, lr=lr, resilient=resilient,
                                    resilient_cost=resilient_cost, layers=active))
        except ValueError as e:
            raise ValueError(f"multipliers: group {name!r}: {e}") from None
    return duals
