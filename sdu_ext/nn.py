"""Drop-in modules built on the fused ops."""
import math

import torch
from torch import nn

from . import ops


class SoftThreshold(nn.Module):
    """Soft-thresholding with a learnable threshold.

    Args:
        num_features: size of the last input dimension for a per-feature threshold,
            or None for one shared threshold.
        init: initial threshold value.
        inplace: threshold the input in place (saves a buffer; still differentiable).
    Input: (..., num_features) floating tensor. Output: same shape and dtype.
    """

    def __init__(self, num_features=None, init=0.1, inplace=False, device=None, dtype=None):
        super().__init__()
        shape = () if num_features is None else (num_features,)
        self.num_features = num_features
        self.inplace = inplace
        self.theta = nn.Parameter(torch.full(shape, float(init), device=device, dtype=dtype))

    def forward(self, x):
        if self.inplace:
            return ops.soft_threshold_(x, self.theta)
        return ops.soft_threshold(x, self.theta)

    def extra_repr(self):
        return f"num_features={self.num_features}, inplace={self.inplace}"


class LISTALayer(nn.Module):
    """One untied LISTA layer ``y <- soft_threshold(y W1^T + xs W2^T, theta)``.

    Args:
        m: code size; n: signal size.
        theta_init: initial per-coordinate threshold.
    Shapes: forward(y (B, m), xs (B, n)) -> (B, m). W1 (m, m), W2 (m, n), theta (m,)
    are learnable. :meth:`from_dictionary` gives the ISTA initialisation.
    """

    def __init__(self, m, n, theta_init=0.0, device=None, dtype=None):
        super().__init__()
        if m < 1 or n < 1:
            raise ValueError(f"m, n: expected positive sizes, got m={m}, n={n}")
        kw = dict(device=device, dtype=dtype)
        self.m, self.n = m, n
        self.W1 = nn.Parameter(torch.empty(m, m, **kw))
        self.W2 = nn.Parameter(torch.empty(m, n, **kw))
        self.theta = nn.Parameter(torch.full((m,), float(theta_init), **kw))
        nn.init.kaiming_uniform_(self.W1, a=math.sqrt(5))
        nn.init.kaiming_uniform_(self.W2, a=math.sqrt(5))

    @classmethod
    def from_dictionary(cls, D, alpha, lipschitz=None):
        """ISTA step for 1/2||x - D y||^2 + alpha ||y||_1: W1 = I - D^T D / Lip,
        W2 = D^T / Lip, theta = alpha / Lip. D is (n, m); Lip defaults to ||D||_2^2."""
        n, m = D.shape
        lip = float(torch.linalg.matrix_norm(D, ord=2) ** 2) if lipschitz is None else float(lipschitz)
        layer = cls(m, n, device=D.device, dtype=D.dtype)
        with torch.no_grad():
            layer.W1.copy_(torch.eye(m, device=D.device, dtype=D.dtype) - D.T @ D / lip)
            layer.W2.copy_(D.T / lip)
            layer.theta.fill_(alpha / lip)
        return layer

    def forward(self, y, xs):
        return ops.lista_layer(y, xs, self.W1, self.W2, self.theta)

    def extra_repr(self):
        return f"m={self.m}, n={self.n}"
