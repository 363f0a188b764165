"""Noise injected between unrolled layers (SPEC sections 4 and 6).

A noise hook is a callable ``noise(layer, y, xs) -> y_noisy``. Every model in
:mod:`sdu_ext.models` calls it after layers 1..L-1 (never after the last one) with
``layer`` = the index l of the iterate it perturbs (``iterates[l]`` of
``forward(x, return_all=True)`` holds the perturbed point, which is where layer l+1
starts: the descent constraints then ask each layer to descend from a perturbed
point), ``y`` (B, m) the layer output and ``xs`` (B, n) the model's input, both in
the model's scaled domain (``xs = scale * x``; scale = 100 for the ``paper``
LISTA initialisation, 1 otherwise). The hook must return a tensor of y's shape; the
model casts it back to y's dtype.

The same hooks serve training (noise-augmented training) and robustness evaluation
(the sigma sweep). Disable a hook by passing ``noise=None`` or ``sigma=0`` (then it
returns ``y`` itself and draws no random numbers).

Random draws use ``generator`` when one is given: the draw happens on the
generator's device and is moved to y's, so a CPU generator reproduces the same
noise for CPU and CUDA models. ``torch.compile(fullgraph=True)`` cannot trace a
``torch.Generator``: compile with ``generator=None`` (the global RNG) or accept a
graph break.

:class:`RescaledNoise` runs a hook in another domain than the model's and
:func:`log_gradient_noise` builds the research LISTA noise in the reference domain of
the robustness protocol (see :mod:`sdu_ext.evaluate.robustness`); training and
evaluation both use them.
"""
from typing import Callable, Optional

import torch
from torch import nn

from ..checks import check_generator, check_number, check_positive

__all__ = ["NEGATIVE", "FixedNoise", "LogGradientNoise", "RescaledNoise", "log_gradient_noise"]

NEGATIVE = ("clamp", "abs")


def _randn(shape, generator, dtype, device):
    """Standard normal tensor of ``shape``; see the module docstring for ``generator``.

    Half-precision draws are made in float32 and rounded, so a model under autocast
    sees the same random numbers as the float32 model."""
    draw = torch.promote_types(dtype, torch.float32)
    if generator is None:
        return torch.randn(shape, dtype=draw, device=device).to(dtype)
    return torch.randn(shape, generator=generator, dtype=draw, device=generator.device).to(device, dtype)


class _Memo:
    """One value computed from tensors, reused while the very same tensor objects (same version
    counters, so not modified in place) come back with the same ``extra`` (plain values). It
    holds references to those tensors, so their memory cannot pass to other tensors meanwhile."""

    def __init__(self):
        self._key = self._value = None

    def get(self, tensors, extra, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        try:
            versions = tuple(t._version for t in tensors)
        except RuntimeError:  # inference tensors keep no version counter: no reuse
            return compute()
        key = self._key
        if key is not None and len(key[0]) == len(tensors) and all(a is b for a, b in zip(key[0], tensors)) \
                and key[1] == versions and key[2] == extra:
            return self._value
        self._key, self._value = None, compute()
        self._key = (tuple(tensors), versions, extra)
        return self._value

    def __deepcopy__(self, memo):
        return _Memo()


def _check_sigma(sigma):
    """``float(sigma)`` for a finite number >= 0 (a noise level), else ValueError naming sigma."""
    return check_number(sigma, "sigma", low=0.0, what="a non-negative number")


class FixedNoise(nn.Module):
    """The plain rule: ``y + sigma * N(0, I)``.

    Args:
        sigma: standard deviation (finite, >= 0), in the model's scaled domain.
        generator: optional ``torch.Generator`` for reproducible draws.
    Call: ``(layer, y (B, m), xs (B, n)) -> (B, m)`` in y's dtype and device.
    """

    def __init__(self, sigma: float, generator: Optional[torch.Generator] = None):
        super().__init__()
        self.sigma = _check_sigma(sigma)
        self.generator = check_generator(generator)

    def forward(self, layer: int, y: torch.Tensor, xs: torch.Tensor) -> torch.Tensor:
        if self.sigma == 0:
            return y
        return y + self.sigma * _randn(y.shape, self.generator, y.dtype, y.device)

    def extra_repr(self):
        return f"sigma={self.sigma:g}"


class LogGradientNoise(nn.Module):
    """The research LISTA rule: ``y + sigma * s_b * N(0, I)`` per sample b, with
    ``s_b = log ||D^T (D y_b - xs_b)||`` computed in the scaled domain and detached.

    ``sigma`` is the factor of the robustness sweep (SPEC section 6; 1 = the training
    rule). A log-norm is negative when the gradient norm is below 1, so ``negative``
    chooses what a negative ``s_b`` means:

    - ``"clamp"`` (default): ``s_b <- max(s_b, 0)``; samples whose gradient norm is
      below 1 (near the optimum) are left unperturbed.
    - ``"abs"``: ``s_b <- |s_b|``. This is what the research code does: it multiplies a
      standard normal draw by ``s_b`` directly, and a symmetric draw times a negative
      factor is distributed as the draw times ``|s_b|``; the noise then grows as the
      gradient vanishes. The norm is floored at the dtype's smallest normal number so
      a zero gradient gives a large finite scale, never inf.

    The gradient ``D^T (D y - xs)`` is computed in one of two equal forms (same sigma, same
    random draws; they differ by rounding only):

    - residual form: ``(y D^T - xs) D``, two GEMMs of B n m each per call;
    - Gram form: ``y G - xs D`` with ``G = D^T D`` (m, m) computed once per dictionary and
      ``xs D`` (B, m) once per forward (reused while the model passes the same ``xs`` tensor
      to every layer, unmodified; not for inference-mode tensors, which take the residual
      form): one GEMM of B m m per call. It pays when ``m < 2 n``.

    Both are accurate to the same absolute error (a few units of rounding of ``|D^T xs|``);
    only a gradient norm at that rounding level (an exact optimum) is known to no digit in
    either form, which moves its log-norm but, under ``"clamp"``, not the (zero) noise.

    Args:
        D: dictionary (n, m); kept as a (non-persistent) buffer, so ``.to(device)``
            moves it with the hook. Pass ``model.D`` to reuse a model's copy.
        sigma: factor (finite, >= 0) on the scale.
        negative: ``"clamp"`` or ``"abs"``.
        generator: optional ``torch.Generator`` for reproducible draws.
        gram: True / False force the Gram / residual form; None (default) takes the Gram
            form when ``m <= 1.5 n`` (cheaper once a forward has 2 or more noisy layers),
            except while ``torch.compile`` traces (the residual form, no cached tensors).
    Call: ``(layer, y (B, m), xs (B, n)) -> (B, m)`` in y's dtype and device.
    """

    def __init__(self, D: torch.Tensor, sigma: float = 1.0, negative: str = "clamp",
                 generator: Optional[torch.Generator] = None, gram: Optional[bool] = None):
        super().__init__()
        if not isinstance(D, torch.Tensor) or D.dim() != 2 or not D.is_floating_point():
            got = tuple(D.shape) if isinstance(D, torch.Tensor) else type(D).__name__
            raise ValueError(f"D: expected a 2-D floating tensor (n, m), got {got}")
        if negative not in NEGATIVE:
            raise ValueError(f"negative: expected 'clamp' or 'abs', got {negative!r}")
        self.register_buffer("D", D.detach(), persistent=False)
        self.sigma = _check_sigma(sigma)
        self.negative = negative
        self.generator = check_generator(generator)
        if gram not in (None, True, False):
            raise ValueError(f"gram: expected True, False or None (automatic), got {gram!r}")
        self.gram = gram
        self._gram_memo, self._xs_memo = _Memo(), _Memo()

    def uses_gram(self) -> bool:
        """Whether :meth:`scale` takes the Gram form now (see the class docstring)."""
        if torch.compiler.is_compiling():
            return False
        if self.gram is not None:
            return self.gram
        n, m = self.D.shape
        return m <= 1.5 * n

    def gradient(self, y: torch.Tensor, xs: torch.Tensor) -> torch.Tensor:
        """``D^T (D y_b - xs_b)`` per sample (B, m), detached, in float32 or wider."""
        acc = torch.promote_types(y.dtype, torch.float32)
        y = y.detach().to(acc)
        if not self.uses_gram() or xs.is_inference():  # (no version counter: xs D cannot be reused)
            D = self.D.to(device=y.device, dtype=acc)
            return (y @ D.T - xs.detach().to(acc)) @ D
        where = (y.device, acc)
        src = self.D
        G = self._gram_memo.get((src,), where, lambda: _gram(src.to(device=y.device, dtype=acc)))
        xsD = self._xs_memo.get((xs, src), where, lambda: xs.detach().to(acc) @ src.to(device=y.device, dtype=acc))
        return torch.addmm(xsD, y, G, beta=-1)  # y G - xs D

    def scale(self, y: torch.Tensor, xs: torch.Tensor) -> torch.Tensor:
        """Per-sample noise standard deviation ``sigma * s_b`` (B,), detached, in
        float32 or wider (float64 for float64 inputs)."""
        acc = torch.promote_types(y.dtype, torch.float32)
        grad = self.gradient(y, xs)
        norm = torch.linalg.vector_norm(grad.to(acc), dim=-1)
        s = torch.log(norm.clamp_min(torch.finfo(acc).tiny))
        s = s.clamp_min(0) if self.negative == "clamp" else s.abs()
        return self.sigma * s

    def forward(self, layer: int, y: torch.Tensor, xs: torch.Tensor) -> torch.Tensor:
        if self.sigma == 0:
            return y
        std = self.scale(y, xs).to(y.dtype).unsqueeze(-1)
        return y + std * _randn(y.shape, self.generator, y.dtype, y.device)

    def extra_repr(self):
        return f"sigma={self.sigma:g}, negative={self.negative!r}"


def _gram(D):
    """``D^T D`` (m, m), symmetrised so both halves are the same rounding."""
    G = D.T @ D
    return 0.5 * (G + G.T)


class RescaledNoise(nn.Module):
    """A noise hook applied in a domain ``factor`` times the model's:
    ``noise(l, y, xs) = inner(l, factor * y, factor * xs) / factor``.

    Args:
        inner: a noise hook (e.g. :class:`LogGradientNoise`).
        factor: positive finite scale; 1 returns ``inner``'s output unchanged.
    ``generator`` is the inner hook's (so the trainer seeds and checkpoints it).
    Call: ``(layer, y (B, m), xs (B, n)) -> (B, m)``.
    """

    def __init__(self, inner: Callable, factor: float):
        super().__init__()
        if not callable(inner):
            raise ValueError(f"inner: expected a noise hook (callable), got {type(inner).__name__}")
        self.inner = inner
        self.factor = check_positive(factor, "factor")
        self._xs_memo = _Memo()  # the scaled xs, one tensor per forward (the inner hook's memo reuses it)

    @property
    def generator(self) -> Optional[torch.Generator]:
        return getattr(self.inner, "generator", None)

    def forward(self, layer: int, y: torch.Tensor, xs: torch.Tensor) -> torch.Tensor:
        if self.factor == 1.0:
            return self.inner(layer, y, xs)
        xs = self._xs_memo.get((xs,), self.factor, lambda: xs * self.factor)
        return self.inner(layer, y * self.factor, xs) / self.factor

    def extra_repr(self) -> str:
        return f"factor={self.factor:g}"


def log_gradient_noise(model: nn.Module, sigma: float, negative: str = "clamp", domain_scale: float = 100.0,
                       generator: Optional[torch.Generator] = None) -> RescaledNoise:
    """The research noise ``sigma * log ||D^T (D y - xs)|| * N(0, I)`` for ``model`` (a LISTA-like
    model with ``D`` (n, m) and ``scale``), computed in the reference domain of scale
    ``domain_scale`` (:mod:`sdu_ext.evaluate.robustness` explains the domain)."""
    inner = LogGradientNoise(model.D, sigma=sigma, negative=negative, generator=generator)
    return RescaledNoise(inner, domain_scale / model.scale)
