"""Learned unrolled models: LISTA (untied or tied), LISTA-CP and ALISTA (SPEC section 2).

All share the :class:`~sdu_ext.models.classic.Unrolled` interface.
"""
import math
import numbers

import torch
from torch import nn

from .. import ops
from ..checks import check_generator, check_positive
from ..nn import LISTALayer
from .classic import Unrolled, _describe
from .noise import _randn

INITS = ("ista", "paper", "random")
PAPER_STD = 0.01
PAPER_SCALE = 100.0
# Defaults of the `random` initialisation: the research code's weight scale, without its
# x100 domain, and an initial point of the same small size.
RANDOM_WEIGHT_STD = 0.01
RANDOM_Y0_STD = 0.01


def _check_std(value, name):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value >= 0 \
            or value == float("inf"):
        raise ValueError(f"{name}: expected a finite number >= 0, got {value!r}")
    return float(value)


class LISTA(Unrolled):
    """LISTA: layer l is ``y <- soft(W1_l y + W2_l xs, theta_l)`` (:func:`sdu_ext.ops.lista_layer`).

    Args:
        D, alpha, num_layers: see :class:`~sdu_ext.models.classic.Unrolled`.
        init: ``"ista"``: W1 = I - D^T D / Lip, W2 = D^T / Lip, theta = alpha / Lip,
            y_0 = 0, scale 1 — the untrained network is exactly L ISTA steps.
            ``"paper"`` (the research code): every entry of W1, W2, theta drawn from
            N(0, 0.01^2), inputs scaled by 100 and y_0 ~ N(0, I) in the scaled domain
            (a fresh draw per forward, from forward's ``generator`` when given);
            outputs are divided by 100.
            ``"random"``: every entry of W1, W2, theta drawn from N(0, weight_std^2)
            (default 0.01), scale 1 (no x100 domain), and y_0 ~ N(0, y0_std^2 I)
            (default 0.01; a fresh draw per forward, from forward's ``generator`` when
            given). The untrained network does not descend: its intermediate layers are
            free to wander, which is where descent constraints have something to do.
        tied: share one layer's weights across all L layers.
        generator: optional ``torch.Generator`` for the ``paper`` / ``random`` weight draw.
        weight_std, y0_std: the standard deviations of the ``random`` initialisation
            (finite, >= 0); only ``init="random"`` accepts them.
    The state dict records ``init`` and ``y0_std`` (they fix the scale and the initial point).
    Parameters: ``layers`` is a ModuleList of :class:`sdu_ext.nn.LISTALayer` (L of
    them, or 1 when tied), each with W1 (m, m), W2 (m, n), theta (m,), in D's dtype.
    """

    def __init__(self, D, alpha, num_layers, init="ista", tied=False, generator=None,
                 weight_std=None, y0_std=None):
        super().__init__(D, alpha, num_layers)
        if init not in INITS:
            raise ValueError(f"init: expected one of {', '.join(map(repr, INITS))}, got {init!r}")
        check_generator(generator)
        if init != "random":
            for name, value in (("weight_std", weight_std), ("y0_std", y0_std)):
                if value is not None:
                    raise ValueError(f"{name}: only init='random' takes it, got {value!r} with init={init!r}")
        std = PAPER_STD
        self.y0_std = None
        if init == "random":
            std = _check_std(RANDOM_WEIGHT_STD if weight_std is None else weight_std, "weight_std")
            self.y0_std = _check_std(RANDOM_Y0_STD if y0_std is None else y0_std, "y0_std")
        self.init = init
        self.tied = bool(tied)
        self.scale = PAPER_SCALE if init == "paper" else 1.0
        count = 1 if self.tied else self.num_layers
        D = self.D
        if init == "ista":
            layers = [LISTALayer.from_dictionary(D, self.alpha, self.lipschitz) for _ in range(count)]
        else:
            layers = [LISTALayer(self.m, self.n, device=D.device, dtype=D.dtype) for _ in range(count)]
            with torch.no_grad():
                for layer in layers:
                    for p in (layer.W1, layer.W2, layer.theta):
                        p.copy_(std * _randn(p.shape, generator, p.dtype, p.device))
        self.layers = nn.ModuleList(layers)

    def extra_repr(self):
        extra = f", y0_std={self.y0_std:g}" if self.init == "random" else ""
        return super().extra_repr() + f", init={self.init!r}, tied={self.tied}" + extra

    # The initialisation fixes the input scale and the initial point, which trained
    # weights depend on: the state dict carries it, so loading a `paper` checkpoint
    # into a model built with init="ista" gives the `paper` model.
    def get_extra_state(self):
        state = {"init": self.init}
        if self.init == "random":
            state["y0_std"] = self.y0_std
        return state

    def set_extra_state(self, state):
        init = state["init"]
        if init not in INITS:
            raise ValueError(f"init: expected one of {', '.join(map(repr, INITS))} in the state dict, got {init!r}")
        y0_std = None
        if init == "random":
            if "y0_std" not in state:
                raise ValueError("y0_std: expected it in the state dict of an init='random' model, got none")
            y0_std = _check_std(state["y0_std"], "y0_std")
        self.init, self.y0_std = init, y0_std
        self.scale = PAPER_SCALE if init == "paper" else 1.0

    def _initial_point(self, xs, generator):
        if self.init == "paper":
            return _randn((xs.shape[0], self.m), generator, xs.dtype, xs.device)
        if self.init == "random":
            return self.y0_std * _randn((xs.shape[0], self.m), generator, xs.dtype, xs.device)
        return xs.new_zeros(xs.shape[0], self.m)

    def _weights(self, dtype):
        return [(layer.W1.to(dtype), layer.W2.to(dtype), layer.theta) for layer in self.layers]

    def _layer(self, l, y, xs, weights):
        W1, W2, theta = weights[0 if self.tied else l]
        return ops.lista_layer(y, xs, W1, W2, theta)


class LISTA_CP(Unrolled):
    """LISTA with coupled weights (LISTA-CP): ``y <- soft(y - W_l^T (D y - xs), theta_l)``,
    i.e. W1 = I - W_l^T D and W2 = W_l^T.

    Learned: ``W`` (ParameterList of L tensors (n, m), initialised to D / Lip) and
    ``theta`` (ParameterList of L tensors (m,), per-coordinate thresholds initialised to
    alpha / Lip): at initialisation the network is exactly L ISTA steps.
    """

    def __init__(self, D, alpha, num_layers):
        super().__init__(D, alpha, num_layers)
        D = self.D
        self.W = nn.ParameterList(
            [nn.Parameter(D / self.lipschitz) for _ in range(self.num_layers)])
        self.theta = nn.ParameterList(
            [nn.Parameter(torch.full((self.m,), self.alpha / self.lipschitz, dtype=D.dtype, device=D.device))
             for _ in range(self.num_layers)])

    def _weights(self, dtype):
        return self.D.to(dtype), [W.to(dtype) for W in self.W]

    def _layer(self, l, y, xs, weights):
        D, W = weights
        return ops.soft_threshold(y - (y @ D.T - xs) @ W[l], self.theta[l])


class ALISTA(Unrolled):
    """ALISTA-style model: ``y <- soft(y - gamma_l W^T (D y - xs), theta_l)`` with an
    analytic weight W (n, m) computed from D (:meth:`analytic_weight`, a buffer) and
    only the scalars ``gamma`` (L,) and ``theta`` (L,) learned.

    Initialisation: gamma_l = 1 / ||W^T D||_2 and theta_l = alpha * gamma_l, an ISTA-like
    step with the preconditioned gradient W^T (D y - x) (for a well-conditioned
    dictionary W is close to D and the model close to ISTA).

    Args:
        D, alpha, num_layers: see :class:`~sdu_ext.models.classic.Unrolled`.
        ridge: relative ridge of the weight computation, a finite number > 0 (see
            :meth:`analytic_weight`).
    """

    def __init__(self, D, alpha, num_layers, ridge=1e-6):
        super().__init__(D, alpha, num_layers)
        D = self.D
        W = self.analytic_weight(D, ridge)
        self.register_buffer("W", W)
        gamma = 1.0 / float(torch.linalg.matrix_norm(W.double().T @ D.double(), ord=2))
        kw = dict(dtype=D.dtype, device=D.device)
        self.gamma = nn.Parameter(torch.full((self.num_layers,), gamma, **kw))
        self.theta = nn.Parameter(torch.full((self.num_layers,), self.alpha * gamma, **kw))

    @staticmethod
    def analytic_weight(D, ridge=1e-6):
        """The analytic ALISTA weight W (n, m) for a dictionary D (n, m), in D's dtype.

        Column i minimises ``||D^T w||^2`` subject to ``d_i^T w = 1``; together the
        columns minimise ``||W^T D||_F^2`` (the coherence between W and D) subject to
        ``diag(W^T D) = 1``. The solution is
        ``w_i = M d_i / (d_i^T M d_i)`` with ``M = (D D^T + lambda I)^{-1}``, computed in
        float64, ``lambda = ridge * ||D||_2^2``. The ridge only regularises the solve:
        d_i lies in the range of D, so for a rank-deficient D (n > m, or dependent
        atoms) the result tends to the pseudo-inverse solution as ridge -> 0, and
        ``diag(W^T D) = 1`` holds exactly for any ridge > 0. A zero column d_i gets
        w_i = 0.
        """
        if not isinstance(D, torch.Tensor) or D.dim() != 2 or not D.is_floating_point():
            raise ValueError(f"D: expected a 2-D floating tensor (n, m), got {_describe(D)}")
        ridge = check_positive(ridge, "ridge")  # lambda > 0 keeps D D^T + lambda I invertible
        D64 = D.detach().double()
        n = D64.shape[0]
        gram = D64 @ D64.T
        lam = ridge * float(torch.linalg.matrix_norm(D64, ord=2)) ** 2
        if not math.isfinite(lam):
            raise ValueError(f"ridge: expected a number small enough that ridge * ||D||_2^2 is finite, got {ridge!r}")
        MD = torch.linalg.solve(gram + lam * torch.eye(n, dtype=gram.dtype, device=gram.device), D64)
        denom = (D64 * MD).sum(0)
        zero = denom <= torch.finfo(torch.float64).tiny
        W = torch.where(zero, torch.zeros_like(MD), MD / torch.where(zero, torch.ones_like(denom), denom))
        return W.to(D.dtype)

    def _weights(self, dtype):
        return self.D.to(dtype), self.W.to(dtype)

    def _layer(self, l, y, xs, weights):
        D, W = weights
        return ops.soft_threshold(y - self.gamma[l] * ((y @ D.T - xs) @ W), self.theta[l])
