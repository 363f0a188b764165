"""The LASSO objective f(y; x) = 1/2 ||x - D y||^2 + alpha ||y||_1, batched over rows."""
import torch

from .. import ops
from ..checks import check_finite_tensor, check_number, describe


class Lasso:
    """LASSO for a dictionary ``D`` (n, m) and weight ``alpha >= 0``.

    Every method is batched over rows: signals ``x`` are (B, n), codes ``y`` are
    (B, m), and per-sample results are (B,). Tensors follow D's dtype and device.

    ``D`` must be finite (NaN or infinite entries raise ValueError counting them);
    ``alpha`` is a finite real number >= 0 (a Python or numpy number, or a one-element
    tensor), stored as a float.
    """

    def __init__(self, D, alpha):
        if not isinstance(D, torch.Tensor) or D.dim() != 2 or not D.is_floating_point():
            raise ValueError(f"D: expected a 2-D floating tensor (n, m), got {describe(D)}")
        if D.shape[0] < 1 or D.shape[1] < 1:
            raise ValueError(f"D: expected n >= 1 and m >= 1, got shape {tuple(D.shape)}")
        self.alpha = check_number(alpha, "alpha", low=0.0, what="a non-negative value")
        self.D = check_finite_tensor(D, "D")
        self._lipschitz = None

    @property
    def n(self):
        return self.D.shape[0]

    @property
    def m(self):
        return self.D.shape[1]

    @property
    def lipschitz(self):
        """Lipschitz constant of grad g: the largest eigenvalue of D^T D (= ||D||_2^2),
        computed once in float64 from the singular values (not the Frobenius norm)."""
        if self._lipschitz is None:
            self._lipschitz = float(torch.linalg.matrix_norm(self.D.detach().double(), ord=2)) ** 2
        return self._lipschitz

    def _check(self, y, x):
        for t, name, width, what in ((x, "x", self.n, "n"), (y, "y", self.m, "m")):
            if not isinstance(t, torch.Tensor) or t.dim() != 2 or t.shape[1] != width:
                raise ValueError(f"{name}: expected a tensor of shape (B, {width}) = (B, {what}), got {describe(t)}")
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"y: expected {x.shape[0]} rows (the batch size B of x), got {y.shape[0]}")

    def residual(self, y, x):
        """D y - x, (B, n)."""
        self._check(y, x)
        return y @ self.D.T - x

    def value(self, y, x):
        """f(y; x) per sample, (B,)."""
        r = self.residual(y, x)
        return 0.5 * r.pow(2).sum(-1) + self.alpha * y.abs().sum(-1)

    def smooth_grad(self, y, x):
        """grad g(y) = D^T (D y - x), (B, m)."""
        return self.residual(y, x) @ self.D

    def subgradient(self, y, x):
        """Minimum-norm subgradient of f at y, (B, m) (via the fused op)."""
        return ops.min_norm_subgradient(self.smooth_grad(y, x), y, self.alpha)

    def duality_gap(self, y, x):
        """Per-sample duality gap P(y) - D(theta) >= 0, (B,), computed in float64.

        theta = s (x - D y) scaled by s = min(1, alpha / ||D^T (x - D y)||_inf) is
        dual feasible, so the gap certifies f(y) - f(y*) <= gap.
        """
        self._check(y, x)
        D, y, x = self.D.double(), y.double(), x.double()
        r = x - y @ D.T
        corr = (r @ D).abs().amax(-1)
        s = torch.where(corr > self.alpha, self.alpha / corr.clamp_min(1e-300), torch.ones_like(corr))
        theta = s.unsqueeze(-1) * r
        primal = 0.5 * r.pow(2).sum(-1) + self.alpha * y.abs().sum(-1)
        dual = 0.5 * x.pow(2).sum(-1) - 0.5 * (x - theta).pow(2).sum(-1)
        return (primal - dual).clamp_min(0)
