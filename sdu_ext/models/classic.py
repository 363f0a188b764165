"""The unrolled-model interface and the non-learned baselines ISTA and FISTA.

Every model solves the LASSO ``min_y 1/2 ||x - D y||^2 + alpha ||y||_1`` (SPEC
section 2) with L layers, each one step of an iterative solver, and shares one
interface (:class:`Unrolled`).
"""
import math

import torch
from torch import nn

from .. import ops
from ..checks import check_callable, check_generator, check_layers, check_positive, describe
from ..problems.lasso import Lasso

_describe = describe  # the name models/lista.py imports


class Unrolled(nn.Module):
    """Base of the unrolled sparse-coding models: L layers for the LASSO of ``D``, ``alpha``.

    Args (common to every model):
        D: dictionary (n, m), floating; copied into the buffer ``D``, whose dtype and
            device are the model's (``model.to(...)`` converts it with the weights).
        alpha: L1 weight, a finite number >= 0 (D's entries must be finite too).
        num_layers: L >= 1.
    Bad values raise ValueError naming the argument.

    ``forward(x, return_all=False, noise=None, y0=None, generator=None)``:
        x: (B, n) signals in the model's dtype and device.
        return_all: False -> the final code (B, m); True -> the stacked iterates
            (L+1, B, m), index 0 = the initial point, index l = the output of layer l
            (after the noise hook, when one is given) — the input of
            :func:`sdu_ext.ops.descent_constraints`.
        noise: optional hook ``noise(l, y, xs) -> y`` applied after layers 1..L-1
            (see :mod:`sdu_ext.models.noise`).
        y0: optional initial point (B, m), in the unscaled domain of the outputs;
            default: zeros (random for the ``paper`` LISTA initialisation).
        generator: optional ``torch.Generator`` for a random default initial point.
    Layers work in a scaled domain: ``xs = scale * x`` and codes times ``scale``
    (``scale`` = 100 for the ``paper`` LISTA initialisation, 1 otherwise); returned
    codes are divided by ``scale``.

    ``torch.compile(model, fullgraph=True)`` traces every model; a ``torch.Generator``
    (here or in a noise hook) cannot be traced, so compiled training draws from the
    global RNG (``generator=None``) or passes ``y0`` explicitly.

    Under ``torch.autocast`` a float32 model runs its layers in the autocast dtype
    (weights, codes and signals are cast together, thresholds stay float32), and
    returns codes in that dtype.
    """

    scale = 1.0

    def __init__(self, D, alpha, num_layers):
        super().__init__()
        problem = Lasso(D, alpha)
        self.num_layers = check_layers(num_layers)
        if not problem.lipschitz > 0:
            raise ValueError("D: expected a nonzero dictionary (||D||_2 > 0), got all zeros")
        if not math.isfinite(problem.lipschitz):
            raise ValueError(f"D: expected ||D||_2^2 finite in float64, got {problem.lipschitz} "
                             f"(largest |entry| {float(D.detach().abs().max()):g})")
        self.n, self.m = problem.n, problem.m
        self.alpha = problem.alpha
        self.lipschitz = problem.lipschitz
        self.register_buffer("D", D.detach().clone())

    @property
    def problem(self):
        """The :class:`~sdu_ext.problems.Lasso` this model unrolls (on the model's D)."""
        return Lasso(self.D, self.alpha)

    def extra_repr(self):
        return f"n={self.n}, m={self.m}, num_layers={self.num_layers}, alpha={self.alpha:g}"

    # ------------------------------------------------------------ subclass hooks

    def _weights(self, dtype):
        """Per-forward tensors the layers use, cast once to the compute dtype."""
        return self.D.to(dtype)

    def _layer(self, l, y, xs, weights):
        """Layer l (0-based) on codes y (B, m) and signals xs (B, n) of the scaled domain."""
        raise NotImplementedError

    def _initial_point(self, xs, generator):
        return xs.new_zeros(xs.shape[0], self.m)

    def _unroll(self, y, xs, noise, keep):
        weights = self._weights(xs.dtype)
        iterates = [y] if keep else None
        for l in range(self.num_layers):
            y = self._perturb(noise, l, self._layer(l, y, xs, weights), xs)
            if keep:
                iterates.append(y)
        return torch.stack(iterates) if keep else y

    def _perturb(self, noise, l, y, xs):
        if noise is None or l == self.num_layers - 1:
            return y
        return noise(l + 1, y, xs).to(y.dtype)

    # ------------------------------------------------------------ forward

    def _check_tensor(self, t, name, width, what, batch=None):
        dtype, device = self.D.dtype, self.D.device
        if not isinstance(t, torch.Tensor) or t.dim() != 2 or t.shape[1] != width \
                or (batch is not None and t.shape[0] != batch):
            b = "B" if batch is None else str(batch)
            raise ValueError(f"{name}: expected shape ({b}, {width}) = {what}, got {describe(t)}")
        if t.dtype != dtype:
            raise ValueError(f"{name}: expected dtype {dtype} (the model's), got {t.dtype}")
        if t.device != device:
            raise ValueError(f"{name}: expected device {device} (the model's), got {t.device}")

    def _compute_dtype(self):
        dtype, kind = self.D.dtype, self.D.device.type
        if dtype == torch.float32 and torch.is_autocast_enabled(kind):
            return torch.get_autocast_dtype(kind)
        return dtype

    def forward(self, x, return_all=False, noise=None, y0=None, generator=None):
        self._check_tensor(x, "x", self.n, f"(B, n) with n = {self.n} from D")
        check_callable(noise, "noise")
        check_generator(generator)
        dtype = self._compute_dtype()
        scale = self.scale
        xs = (x * scale if scale != 1.0 else x).to(dtype)
        if y0 is None:
            y = self._initial_point(xs, generator)
        else:
            self._check_tensor(y0, "y0", self.m, f"(B, m) with m = {self.m} from D and B from x",
                               batch=x.shape[0])
            y = (y0 * scale if scale != 1.0 else y0).to(dtype)
        out = self._unroll(y, xs, noise, keep=return_all)
        return out / scale if scale != 1.0 else out


class ISTA(Unrolled):
    """L unrolled ISTA steps ``y <- soft(y - step * D^T (D y - x), alpha * step)``.

    No parameters (D is a buffer). ``step`` defaults to 1 / ||D||_2^2.
    """

    def __init__(self, D, alpha, num_layers, step=None):
        super().__init__(D, alpha, num_layers)
        self.step = 1.0 / self.lipschitz if step is None else check_positive(step, "step")

    def _layer(self, l, y, xs, D):
        return ops.soft_threshold(y - self.step * ((y @ D.T - xs) @ D), self.alpha * self.step)

    def extra_repr(self):
        return super().extra_repr() + f", step={self.step:g}"


class FISTA(ISTA):
    """L unrolled FISTA steps (Beck and Teboulle's momentum, t_1 = 1):

    ``y_l = soft(z_l - step * grad g(z_l), alpha * step)``, ``z_1 = y_0``,
    ``t_{l+1} = (1 + sqrt(1 + 4 t_l^2)) / 2``,
    ``z_{l+1} = y_l + (t_l - 1) / t_{l+1} * (y_l - y_{l-1})``.

    The returned iterates are the y_l (the extrapolated z_l are internal); a noise
    hook perturbs y_l before the extrapolation.
    """

    def _unroll(self, y, xs, noise, keep):
        D = self._weights(xs.dtype)
        iterates = [y] if keep else None
        z, t = y, 1.0
        for l in range(self.num_layers):
            y_new = self._perturb(noise, l, self._layer(l, z, xs, D), xs)
            t_next = (1.0 + math.sqrt(1.0 + 4.0 * t * t)) / 2.0
            z = y_new + ((t - 1.0) / t_next) * (y_new - y)
            y, t = y_new, t_next
            if keep:
                iterates.append(y)
        return torch.stack(iterates) if keep else y
