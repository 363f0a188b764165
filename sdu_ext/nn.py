"""Drop-in modules built on the fused ops."""
import math

import torch
from torch import nn

from . import ops
from .checks import check_finite_tensor, check_number, describe, is_int


def _check_input(t, name, what):
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name}: expected a tensor {what}, got {describe(t)}")


class SoftThreshold(nn.Module):
    """Soft-thresholding with a learnable threshold.

    Args:
        num_features: size of the last input dimension for a per-feature threshold
            (an integer >= 1), or None for one shared threshold.
        init: initial threshold value, a finite real number.
        inplace: threshold the input in place (saves a buffer; still differentiable).
    Input: (..., num_features) floating tensor. Output: same shape and dtype.
    Bad arguments raise ValueError naming the argument.
    """

    def __init__(self, num_features=None, init=0.1, inplace=False, device=None, dtype=None):
        super().__init__()
        if num_features is not None and (not is_int(num_features) or num_features < 1):
            raise ValueError(f"num_features: expected None or an integer >= 1, got {num_features!r}")
        init = check_number(init, "init")
        shape = () if num_features is None else (int(num_features),)
        self.num_features = num_features
        self.inplace = inplace
        self.theta = nn.Parameter(torch.full(shape, float(init), device=device, dtype=dtype))

    def forward(self, x):
        _check_input(x, "x", "(..., num_features)")
        if self.inplace:
            return ops.soft_threshold_(x, self.theta)
        return ops.soft_threshold(x, self.theta)

    def extra_repr(self):
        return f"num_features={self.num_features}, inplace={self.inplace}"


class LISTALayer(nn.Module):
    """One untied LISTA layer ``y <- soft_threshold(y W1^T + xs W2^T, theta)``.

    Args:
        m: code size; n: signal size (integers >= 1).
        theta_init: initial per-coordinate threshold (a finite real number).
    Shapes: forward(y (B, m), xs (B, n)) -> (B, m). W1 (m, m), W2 (m, n), theta (m,)
    are learnable. :meth:`from_dictionary` gives the ISTA initialisation.
    Bad arguments raise ValueError naming the argument.
    """

    def __init__(self, m, n, theta_init=0.0, device=None, dtype=None):
        super().__init__()
        for value, name in ((m, "m"), (n, "n")):
            if not is_int(value) or value < 1:
                raise ValueError(f"{name}: expected an integer >= 1, got {value!r}")
        theta_init = check_number(theta_init, "theta_init")
        kw = dict(device=device, dtype=dtype)
        m, n = int(m), int(n)
        self.m, self.n = m, n
        self.W1 = nn.Parameter(torch.empty(m, m, **kw))
        self.W2 = nn.Parameter(torch.empty(m, n, **kw))
        self.theta = nn.Parameter(torch.full((m,), float(theta_init), **kw))
        nn.init.kaiming_uniform_(self.W1, a=math.sqrt(5))
        nn.init.kaiming_uniform_(self.W2, a=math.sqrt(5))

    @classmethod
    def from_dictionary(cls, D, alpha, lipschitz=None):
        """ISTA step for 1/2||x - D y||^2 + alpha ||y||_1: W1 = I - D^T D / Lip,
        W2 = D^T / Lip, theta = alpha / Lip.

        D: (n, m) floating tensor, finite and not all zeros; the layer takes its dtype
        and device. alpha: finite number >= 0. lipschitz: finite number > 0, default
        ||D||_2^2 (computed in float64).
        """
        if not isinstance(D, torch.Tensor) or D.dim() != 2 or not D.is_floating_point():
            raise ValueError(f"D: expected a 2-D floating tensor (n, m), got {describe(D)}")
        check_finite_tensor(D, "D")
        alpha = check_number(alpha, "alpha", low=0.0, what="a non-negative value")
        n, m = D.shape
        if lipschitz is None:
            lip = float(torch.linalg.matrix_norm(D.detach().double(), ord=2)) ** 2
            if not lip > 0:
                raise ValueError("D: expected a nonzero dictionary (||D||_2 > 0), got all zeros")
            if not math.isfinite(lip):
                raise ValueError(f"D: expected ||D||_2^2 finite in float64, got {lip}")
        else:
            lip = check_number(lipschitz, "lipschitz", low=0.0, strict=True, what="a positive number")
        layer = cls(m, n, device=D.device, dtype=D.dtype)
        with torch.no_grad():
            layer.W1.copy_(torch.eye(m, device=D.device, dtype=D.dtype) - D.T @ D / lip)
            layer.W2.copy_(D.T / lip)
            layer.theta.fill_(alpha / lip)
        return layer

    def forward(self, y, xs):
        _check_input(y, "y", "(B, m)")
        _check_input(xs, "xs", "(B, n)")
        return ops.lista_layer(y, xs, self.W1, self.W2, self.theta)

    def extra_repr(self):
        return f"m={self.m}, n={self.n}"
