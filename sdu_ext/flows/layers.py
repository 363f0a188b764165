"""The invertible building blocks of Glow (Kingma & Dhariwal, 2018).

Every layer maps ``(B, C, H, W) -> (B, C', H', W')`` and has ``forward(x, logdet=True)``
returning ``(y, logdet)`` and an exact ``inverse(y)``. ``logdet`` is the log |det| of the
Jacobian per sample, as a tensor broadcastable to ``(B,)`` (a 0-d tensor for layers whose
Jacobian does not depend on the input), or None when ``logdet=False``.
Shapes and dtypes follow the input; the layers are device-agnostic.
"""
import math

import torch
from torch import nn

_LOG_2PI = math.log(2.0 * math.pi)


def squeeze2x2(x):
    """Space-to-depth: ``(B, C, H, W) -> (B, 4C, H/2, W/2)`` (volume preserving, logdet 0)."""
    b, c, h, w = x.shape
    x = x.reshape(b, c, h // 2, 2, w // 2, 2)
    return x.permute(0, 1, 3, 5, 2, 4).reshape(b, 4 * c, h // 2, w // 2)


def unsqueeze2x2(x):
    """Depth-to-space, the inverse of :func:`squeeze2x2`: ``(B, 4C, H, W) -> (B, C, 2H, 2W)``."""
    b, c, h, w = x.shape
    x = x.reshape(b, c // 4, 2, 2, h, w)
    return x.permute(0, 1, 4, 2, 5, 3).reshape(b, c // 4, 2 * h, 2 * w)


def gaussian_log_prob(z, mean, log_std):
    """Sum over ``(C, H, W)`` of log N(z; mean, exp(log_std)^2); ``(B, C, H, W) -> (B,)``."""
    quad = (z - mean) * torch.exp(-log_std)
    return (-0.5 * (_LOG_2PI + quad * quad) - log_std).sum(dim=(1, 2, 3))


class ActNorm(nn.Module):
    """Per-channel affine map ``y = (x + bias) * exp(log_scale)`` on ``(B, C, H, W)``.

    Data-dependent initialisation: the first forward call on a layer whose ``initialized``
    buffer is False sets bias and scale so that this batch's output has per-channel mean 0
    and (population) standard deviation 1. The flag is a buffer, so a state_dict
    round trip keeps the layer initialised; :meth:`mark_initialized` sets it by hand.
    """

    def __init__(self, channels):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.log_scale = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.register_buffer("initialized", torch.tensor(False))

    @torch.no_grad()
    def initialize(self, x):
        """Set bias/scale from the batch ``x`` (B, C, H, W) and mark the layer initialised."""
        mean = x.mean(dim=(0, 2, 3), keepdim=True)
        std = x.std(dim=(0, 2, 3), keepdim=True, unbiased=False)
        self.bias.copy_(-mean)
        # A floor keeps a constant channel (std 0) from producing an infinite scale.
        self.log_scale.copy_(-torch.log(std.clamp_min(1e-6)))
        self.initialized.fill_(True)

    def mark_initialized(self):
        """Keep the current parameters: no data-dependent initialisation will happen."""
        self.initialized.fill_(True)

    def forward(self, x, logdet=True):
        if not bool(self.initialized):
            self.initialize(x)
        y = (x + self.bias) * torch.exp(self.log_scale)
        ld = x.shape[2] * x.shape[3] * self.log_scale.sum() if logdet else None
        return y, ld

    def inverse(self, y):
        return y * torch.exp(-self.log_scale) - self.bias


class InvConv1x1(nn.Module):
    """Invertible 1x1 convolution with an LU-parameterised ``C x C`` weight.

    ``W = P @ (L + I) @ (U + diag(sign * exp(log_s)))`` with P a fixed permutation,
    L strictly lower and U strictly upper triangular (learned), ``log_s`` learned and
    ``sign`` fixed; log |det| = H * W * sum(log_s). Initialised at a random rotation
    (drawn from the global torch RNG).
    """

    def __init__(self, channels):
        super().__init__()
        q, _ = torch.linalg.qr(torch.randn(channels, channels, dtype=torch.float64))
        p, lower, upper = torch.linalg.lu(q)
        s = torch.diagonal(upper)
        dtype = torch.get_default_dtype()
        self.register_buffer("perm", p.to(dtype))
        self.register_buffer("sign_s", torch.sign(s).to(dtype))
        self.register_buffer("lower_mask", torch.tril(torch.ones(channels, channels, dtype=dtype), -1))
        self.register_buffer("eye", torch.eye(channels, dtype=dtype))
        self.lower = nn.Parameter((lower * self.lower_mask.double()).to(dtype))
        self.upper = nn.Parameter(torch.triu(upper, 1).to(dtype))
        self.log_s = nn.Parameter(torch.log(s.abs()).to(dtype))

    def _factors(self):
        lower = self.lower * self.lower_mask + self.eye
        upper = self.upper * self.lower_mask.T + torch.diag(self.sign_s * torch.exp(self.log_s))
        return lower, upper

    def weight(self):
        """The ``(C, C)`` matrix W (output channel x input channel)."""
        lower, upper = self._factors()
        return self.perm @ lower @ upper

    def inverse_weight(self):
        """``W^{-1} = U^{-1} L^{-1} P^T`` by triangular solves (no general inversion)."""
        lower, upper = self._factors()
        inv = torch.linalg.solve_triangular(lower, self.perm.T, upper=False, unitriangular=True)
        return torch.linalg.solve_triangular(upper, inv, upper=True)

    @staticmethod
    def _mix(matrix, x):
        # A batched matmul rather than conv2d: cuDNN convolutions run float32 in TF32 by
        # default on Ampere and later, which breaks W^{-1} (W x) = x at the 1e-3 level;
        # float32 matmuls stay full precision unless the user opts in to TF32.
        return (matrix @ x.flatten(2)).view_as(x)

    def forward(self, x, logdet=True):
        y = self._mix(self.weight(), x)
        ld = x.shape[2] * x.shape[3] * self.log_s.sum() if logdet else None
        return y, ld

    def inverse(self, y):
        return self._mix(self.inverse_weight(), y)


class ZeroConv2d(nn.Module):
    """Convolution initialised to output zeros, with a learned per-channel output scale.

    ``out = conv(x) * exp(3 * log_scale)``; the factor 3 (as in Glow) lets the output
    scale move faster than the weights early in training. ``(B, Cin, H, W) -> (B, Cout, H, W)``.
    """

    def __init__(self, in_channels, out_channels, kernel_size=3):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2)
        nn.init.zeros_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)
        self.log_scale = nn.Parameter(torch.zeros(1, out_channels, 1, 1))

    def forward(self, x):
        return self.conv(x) * torch.exp(3.0 * self.log_scale)


class AffineCoupling(nn.Module):
    """Affine coupling: the first ``C//2`` channels pass through and condition the rest.

    ``y_b = (x_b + shift(x_a)) * exp(log_s(x_a))`` with the soft-clamped log-scale
    ``log_s = 2 * tanh(raw / 2)``. Glow's ``sigmoid(raw + 2)`` bounds the scale only from
    above: on inputs off the training data (a masked or noisy image, as in GLOW-Prox) trained
    couplings then contract by e^-10 and more per step, float32 loses the information and the
    inverse explodes (NaN in our tests); bounding log_s to (-2, 2) keeps every step's inverse
    within e^2 and trained to a lower bits/dim on the test images. ``log_s = 0`` at
    ``raw = 0``, so with the zero-initialised last convolution the coupling starts as the
    identity. The network is conv3x3-ReLU-conv1x1-ReLU-ZeroConv3x3 with ``hidden`` channels.
    """

    _CLAMP = 2.0

    def __init__(self, channels, hidden):
        super().__init__()
        if channels < 2:
            raise ValueError(f"channels: expected >= 2 for a coupling, got {channels!r}")
        self.split = channels // 2
        self.net = nn.Sequential(
            nn.Conv2d(self.split, hidden, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(hidden, hidden, 1),
            nn.ReLU(),
            ZeroConv2d(hidden, 2 * (channels - self.split)),
        )

    def _shift_log_scale(self, xa):
        shift, raw = self.net(xa).chunk(2, dim=1)
        return shift, self._CLAMP * torch.tanh(raw / self._CLAMP)

    def forward(self, x, logdet=True):
        xa, xb = x[:, :self.split], x[:, self.split:]
        shift, log_s = self._shift_log_scale(xa)
        yb = (xb + shift) * torch.exp(log_s)
        ld = log_s.sum(dim=(1, 2, 3)) if logdet else None
        return torch.cat([xa, yb], dim=1), ld

    def inverse(self, y):
        ya, yb = y[:, :self.split], y[:, self.split:]
        shift, log_s = self._shift_log_scale(ya)
        return torch.cat([ya, yb * torch.exp(-log_s) - shift], dim=1)


class FlowStep(nn.Module):
    """One Glow step on ``(B, C, H, W)``: ActNorm -> invertible 1x1 conv -> affine coupling."""

    def __init__(self, channels, hidden):
        super().__init__()
        self.actnorm = ActNorm(channels)
        self.invconv = InvConv1x1(channels)
        self.coupling = AffineCoupling(channels, hidden)

    def forward(self, x, logdet=True):
        total = 0.0 if logdet else None
        for layer in (self.actnorm, self.invconv, self.coupling):
            x, ld = layer(x, logdet)
            if logdet:
                total = total + ld
        return x, total

    def inverse(self, y):
        for layer in (self.coupling, self.invconv, self.actnorm):
            y = layer.inverse(y)
        return y
