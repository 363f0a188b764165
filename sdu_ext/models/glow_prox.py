"""GLOW-Prox: an unrolled proximal normalizing-flow network for inpainting (SPEC section 5).

Objective per image: f(x, z) = 100 ||y - A x||^2 - log N(z_top; 0, I), with A = diag(mask)
the measurement operator (a projection: A^T = A), so grad_x f = 200 A^T (A x - y) and
grad_z f = z_top. Layer l = 1..L (untied, each with its own Glow G_l):

    x <- x - mu_l A^T (A x - y)           a gradient (descent) step on the data term
    z  = G_l^{-1}(x)                      the Glow latents (one per level)
    z_top <- z_top / (1 + lambda_l)       the proximal step of the Gaussian prior term
    x  = clamp(G_l(z), 0, 1)              exact inverse, then back to the image range

The research code flips the sign of the gradient step and re-samples the lower latents
through the learned priors; both are bugs (SPEC section 5) and are not reproduced.
The initial point x_0 is the masked image y.

Noise hook (training noise and robustness tests): ``noise(layer, x, y) -> x_noisy``
with x, y (B, C, H, W). The model calls it before layers 1..L-1, i.e. on iterates
``layer`` = 0 .. L-2 (``iterates[layer]`` holds the perturbed point, where layer
``layer + 1`` starts), and clamps the result to [0, 1]. :class:`UnitDirectionNoise`
is the SPEC rule: a random unit-norm direction scaled ``sigma / (layer + 1)``.
"""
import math
import numbers

import torch
from torch import nn
from torch.nn import functional as F

from ..checks import check_generator
from ..flows import Glow, GlowConfig
from .noise import _check_sigma, _randn

GRAD_X_WEIGHT = 200.0  # d/dx of 100 ||y - A x||^2 is 200 A^T (A x - y)
LOSSES = ("mean", "sum")
DECODE_BOUND = 1e3  # a decoded image beyond this magnitude counts as an overflow (images live in [0, 1])


def _describe(v):
    return f"shape {tuple(v.shape)}" if isinstance(v, torch.Tensor) else type(v).__name__


def _inverse_softplus(v, name):
    if isinstance(v, bool) or not isinstance(v, numbers.Real) or not (v >= 0 and math.isfinite(v)):
        raise ValueError(f"{name}: expected a finite number >= 0, got {v!r}")
    v = float(v)
    if v == 0:
        return -math.inf
    return v + math.log(-math.expm1(-v))  # log(exp(v) - 1), stable for large v


class UnitDirectionNoise(nn.Module):
    """Noise of SPEC section 5: ``x + sigma / (layer + 1) * u`` with u a random direction of
    unit Euclidean norm per image (over all C*H*W entries).

    Args:
        sigma: factor (finite, >= 0) on the scale (1 = the training rule).
        generator: optional ``torch.Generator`` for reproducible draws (CPU generators
            reproduce the same noise on every device).
    Call: ``(layer, x (B, C, H, W), y) -> (B, C, H, W)`` in x's dtype and device; the
    model clamps the result to [0, 1].
    """

    def __init__(self, sigma=1.0, generator=None):
        super().__init__()
        self.sigma = _check_sigma(sigma)
        self.generator = check_generator(generator)

    def forward(self, layer, x, y):
        if self.sigma == 0:
            return x
        return x + (self.sigma / (layer + 1)) * unit_directions(x.shape, self.generator, x.dtype, x.device)

    def extra_repr(self):
        return f"sigma={self.sigma:g}"


def unit_directions(shape, generator=None, dtype=torch.float32, device=None):
    """Random directions (shape[0], ...) of unit Euclidean norm per sample (uniform on the sphere)."""
    d = _randn(shape, generator, dtype, device)
    norm = torch.linalg.vector_norm(d.flatten(1), dim=1).clamp_min(torch.finfo(d.dtype).tiny)
    return d / norm.view(-1, *([1] * (d.dim() - 1)))


class GlowProxLayer(nn.Module):
    """One layer: its Glow ``glow`` and the step sizes ``mu = softplus(mu_raw)`` and
    ``lam = softplus(lam_raw)`` (scalars), non-negative for every value of the raw
    parameters, so any optimizer step keeps them >= 0.

    Guard: the inverse of an affine-coupling flow divides by the coupling scales, so a
    latent far from the ones the flow was trained on (a shrunk z_top during end-to-end
    training) can overflow. An image whose decoded value is non-finite or exceeds
    ``DECODE_BOUND`` in magnitude skips the proximal step (its output is the clamped
    gradient step) and is counted in ``overflows``; the others are decoded again
    without it, so no NaN reaches the loss or the gradients.
    """

    def __init__(self, config, mu, lam):
        super().__init__()
        self.glow = Glow(config)
        self.mu_raw = nn.Parameter(torch.tensor(_inverse_softplus(mu, "mu")))
        self.lam_raw = nn.Parameter(torch.tensor(_inverse_softplus(lam, "lam")))
        self.overflows = 0

    @property
    def mu(self):
        return F.softplus(self.mu_raw)

    @property
    def lam(self):
        return F.softplus(self.lam_raw)

    def forward(self, x, y, mask):
        """``(x, y (B, C, H, W), mask (1 or C, H, W)) -> (x_next (B, C, H, W), z_top
        shrunk (B, *latent_shape_top), z_top before the shrink)``."""
        x = x - self.mu * (mask * (mask * x - y))
        zs = self.glow.encode(x)
        z_raw = zs[-1]
        z_top = z_raw / (1 + self.lam)
        zs = list(zs[:-1]) + [z_top]
        out = self.glow.decode(zs)
        with torch.no_grad():
            flat = out.detach().flatten(1)
            ok = torch.isfinite(flat).all(dim=1) & (flat.abs().amax(dim=1) <= DECODE_BOUND)
        if not bool(ok.all()):
            self.overflows += int((~ok).sum())
            keep = torch.nonzero(ok).flatten()
            out = x
            if keep.numel():
                out = x.index_copy(0, keep, self.glow.decode([z.index_select(0, keep) for z in zs]))
        return out.clamp(0.0, 1.0), z_top, z_raw


class GlowProx(nn.Module):
    """GLOW-Prox with ``num_layers`` untied layers (see the module docstring).

    Args:
        config: :class:`~sdu_ext.flows.GlowConfig` of every layer's Glow (its
            ``in_channels`` and ``image_size`` fix the image shape C x S x S).
        mask: (S, S), (1, S, S) or (C, S, S) with values in [0, 1] (1 = observed); A = diag(mask).
        num_layers: L >= 1 (SPEC: 5).
        mu, lam: initial step sizes mu_l and shrink factors lambda_l (>= 0; 0 freezes
            that value at 0). mu = 1 makes the first step copy y into the observed pixels.
        pretrained: optional :class:`~sdu_ext.flows.Glow` (e.g. trained by maximum
            likelihood on clean images) whose weights are copied into every layer's Glow;
            its config must equal ``config``.
    Parameters: ``layers`` (ModuleList of L :class:`GlowProxLayer`). ``mu`` and ``lam``
    give the current values (L,). Buffer ``mask`` (1 or C, S, S); the whole model takes the
    mask's floating dtype (e.g. float32, or float64 for gradient checks). ``overflows`` counts the
    images whose Glow inverse overflowed (see :class:`GlowProxLayer`).

    ``forward(y, return_all=False, noise=None)``: y (B, C, S, S) masked images in [0, 1]
    of the model's dtype/device. Returns the output (B, C, S, S), or with ``return_all``
    the iterates (L+1, B, C, S, S), index 0 the initial point y (perturbed when a noise
    hook acts on it). Every forward records ``latents`` (L+1, B, D): row l >= 1 the
    flattened shrunk top latent of layer l (z_l, where grad_z f = z_l), row 0 the top
    latent layer 1 shrinks (before its shrink). :meth:`data_residual` and
    :meth:`latent_residual` are the residual callables of the two descent-constraint
    groups (:class:`~sdu_ext.train.DescentConstraints`).
    """

    def __init__(self, config, mask, num_layers=5, mu=1.0, lam=0.1, pretrained=None):
        super().__init__()
        if not isinstance(config, GlowConfig):
            raise ValueError(f"config: expected a sdu_ext.flows.GlowConfig, got {type(config).__name__}")
        if isinstance(num_layers, bool) or not isinstance(num_layers, numbers.Integral) or num_layers < 1:
            raise ValueError(f"num_layers: expected an integer >= 1, got {num_layers!r}")
        C, S = config.in_channels, config.image_size
        if not isinstance(mask, torch.Tensor) or not mask.is_floating_point():
            raise ValueError(f"mask: expected a floating tensor (S, S), (1, S, S) or (C, S, S), got {_describe(mask)}")
        if mask.dim() == 2:
            mask = mask.unsqueeze(0)
        if mask.dim() != 3 or mask.shape[0] not in (1, C) or tuple(mask.shape[1:]) != (S, S):
            raise ValueError(f"mask: expected shape (1, {S}, {S}) or ({C}, {S}, {S}) to match images of "
                             f"{C} x {S} x {S} (config.in_channels, config.image_size), got {tuple(mask.shape)}")
        if bool(((mask < 0) | (mask > 1) | ~torch.isfinite(mask)).any()):
            raise ValueError(f"mask: expected values in [0, 1], got min {float(mask.min()):g}, "
                             f"max {float(mask.max()):g}")
        if pretrained is not None:
            if not isinstance(pretrained, Glow):
                raise ValueError(f"pretrained: expected a sdu_ext.flows.Glow, got {type(pretrained).__name__}")
            if pretrained.config != config:
                raise ValueError(f"pretrained: expected a Glow with config {config}, got {pretrained.config}")
        self.config = config
        self.num_layers = int(num_layers)
        self.register_buffer("mask", mask.detach().clone())
        self.layers = nn.ModuleList([GlowProxLayer(config, mu, lam) for _ in range(self.num_layers)])
        if pretrained is not None:
            state = pretrained.state_dict()
            for layer in self.layers:
                layer.glow.load_state_dict(state)
        self.to(self.mask.dtype)
        self.latents = None
        self._record = None

    def extra_repr(self):
        c = self.config
        return (f"num_layers={self.num_layers}, images={c.in_channels}x{c.image_size}x{c.image_size}, "
                f"glow=levels {c.levels} x steps {c.steps} x hidden {c.hidden}")

    @property
    def mu(self):
        """Current step sizes mu (L,), >= 0."""
        return torch.stack([layer.mu for layer in self.layers])

    @property
    def lam(self):
        """Current shrink factors lambda (L,), >= 0."""
        return torch.stack([layer.lam for layer in self.layers])

    @property
    def overflows(self):
        """Images (counted once per layer) whose decode overflowed and skipped the proximal
        step since the model was built (see :class:`GlowProxLayer`); a running count."""
        return sum(layer.overflows for layer in self.layers)

    def measure(self, x):
        """``A x = mask * x`` for images x (B, C, S, S)."""
        return self.mask * x

    def _check_y(self, y):
        c = self.config
        want = (c.in_channels, c.image_size, c.image_size)
        if not isinstance(y, torch.Tensor) or y.dim() != 4 or tuple(y.shape[1:]) != want:
            raise ValueError(f"y: expected masked images (B, {', '.join(map(str, want))}) matching the mask and "
                             f"the Glow config, got {_describe(y)}")
        if y.dtype != self.mask.dtype or y.device != self.mask.device:
            raise ValueError(f"y: expected dtype {self.mask.dtype} on {self.mask.device} (the model's), "
                             f"got {y.dtype} on {y.device}")
        if y.numel():
            lo, hi = torch.aminmax(y.detach())
            if not (float(lo) >= 0.0 and float(hi) <= 1.0):
                raise ValueError(f"y: expected images with values in [0, 1], got min {float(lo):g}, "
                                 f"max {float(hi):g}")

    def forward(self, y, return_all=False, noise=None):
        self._check_y(y)
        if noise is not None and not callable(noise):
            raise ValueError(f"noise: expected a callable noise(layer, x, y) or None, got {type(noise).__name__}")
        L = self.num_layers
        x = y
        iterates, latents = [], []
        for l, layer in enumerate(self.layers):
            if noise is not None and l < L - 1:
                x_n = noise(l, x, y)
                if not isinstance(x_n, torch.Tensor) or x_n.shape != x.shape:
                    raise ValueError(f"noise: expected the hook to return a tensor of shape {tuple(x.shape)}, "
                                     f"got {_describe(x_n)}")
                x = x_n.to(x.dtype).clamp(0.0, 1.0)
            iterates.append(x)
            x, z_top, z_before = layer(x, y, self.mask)
            if l == 0:
                latents.append(z_before.flatten(1))
            latents.append(z_top.flatten(1))
        iterates.append(x)
        stacked = torch.stack(iterates)
        self.latents = torch.stack(latents)
        self._record = (stacked.data_ptr(), tuple(stacked.shape))
        return stacked if return_all else x

    @staticmethod
    def distance_residual(iterates, batch):
        """``x_l - x`` of every iterate against the clean images ``batch[1]`` (B, C, S, S),
        flattened: (L+1, B, C*S*S); its norm is the reconstruction error (``distance``, the
        research code's LISTA residual). Nonzero at the masked input wherever the hole is
        not black, and a descent constraint on it at layer 1 asks layer 1 to bring the image
        closer to the clean one, i.e. to raise its PSNR."""
        return (iterates - batch[1]).flatten(2)

    def data_residual(self, iterates, batch):
        """grad_x f = 200 A^T (A x_l - y) of every iterate, flattened: (L+1, B, C*S*S).

        ``iterates`` (L+1, B, C, S, S); ``batch[0]`` the measurements y (B, C, S, S)."""
        y = batch[0]
        return (GRAD_X_WEIGHT * (self.mask * (self.mask * iterates - y))).flatten(2)

    def objective_residual(self, iterates, batch):
        """The whole gradient of f in (x, z): ``[grad_x f, grad_z f]`` of every iterate,
        concatenated: (L+1, B, C*S*S + D), whose norm is
        ``sqrt(||200 A^T (A x_l - y)||^2 + ||z_top,l||^2)``.

        Label-free, and nonzero at the masked input: there ``grad_x f = 0`` (x_0 = y is the
        minimiser of the data term) but the top latent of the masked image is not, so a
        constraint on layer 1 compares layer 1's output with the initial point. The latents
        are the ``latents`` recorded by the forward pass that produced ``iterates``
        (a ValueError otherwise)."""
        return torch.cat([self.data_residual(iterates, batch), self.latent_residual(iterates, batch)], dim=2)

    def latent_residual(self, iterates, batch):
        """grad_z f = z_top of every iterate: the ``latents`` (L+1, B, D) recorded by the
        forward pass that produced ``iterates`` (a ValueError otherwise)."""
        if self._record is None or self._record != (iterates.data_ptr(), tuple(iterates.shape)):
            raise ValueError("iterates: latent_residual needs the iterates of this model's latest forward pass "
                             "(the top latents are recorded there); run the model on the batch first")
        return self.latents


def reconstruction_loss(output, batch, reduction="mean"):
    """Per-image task loss against the clean images ``batch[1]``: (B,) from ``output`` (B, C, H, W).

    ``reduction="mean"``: the mean squared error per pixel (PSNR's quantity);
    ``reduction="sum"``: the squared error summed over the image, ``||x_L - x||^2`` (the
    research code's loss), C*H*W times the mean. The sum keeps the loss on the scale the
    research's dual step size (1e-3) was tuned against; with the mean the same multipliers
    weigh C*H*W times more against the loss."""
    if reduction not in LOSSES:
        raise ValueError(f"reduction: expected one of {', '.join(map(repr, LOSSES))}, got {reduction!r}")
    target = batch[1]
    if not isinstance(output, torch.Tensor) or not isinstance(target, torch.Tensor) or output.dim() != 4 \
            or output.shape != target.shape:
        raise ValueError(f"output: expected images (B, C, H, W) of the clean images' shape "
                         f"{_describe(target)}, got {_describe(output)}")
    err = (output - target).pow(2).flatten(1)
    return err.mean(dim=1) if reduction == "mean" else err.sum(dim=1)
