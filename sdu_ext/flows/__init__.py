"""Normalizing flows: a multi-scale Glow (SPEC section 5) and its maximum-likelihood training.

- :class:`GlowConfig`: the sizes (a validated dataclass).
- :class:`Glow`: ``zs, logdet = glow(x)``, ``glow.inverse(zs)``, ``encode`` / ``decode``,
  ``log_prob``, ``prior_log_prob``, ``sample``.
- :func:`bits_per_dim`, :func:`train_glow`: the likelihood in bits per dimension of
  quantised images and its minimisation with uniform dequantisation.
- :mod:`sdu_ext.flows.layers`: ActNorm, LU 1x1 convolution, affine coupling, squeeze.
"""
from .config import GlowConfig
from .glow import Glow
from .layers import ActNorm, AffineCoupling, FlowStep, InvConv1x1, ZeroConv2d
from .training import bits_per_dim, train_glow

__all__ = ["Glow", "GlowConfig", "bits_per_dim", "train_glow",
           "ActNorm", "InvConv1x1", "AffineCoupling", "FlowStep", "ZeroConv2d"]
