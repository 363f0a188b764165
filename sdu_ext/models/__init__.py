"""Unrolled sparse-coding models with one interface (see :class:`Unrolled`):
``model(x)`` returns the final code (B, m), ``model(x, return_all=True)`` the stacked
iterates (L+1, B, m) with index 0 the initial point.

Learned: :class:`LISTA` (``ista``/``paper`` initialisation, tied or untied),
:class:`LISTA_CP`, :class:`ALISTA`, :class:`GlowProx` (inpainting). Baselines:
:class:`ISTA`, :class:`FISTA`. Noise hooks between layers (training and robustness
tests): :class:`LogGradientNoise`, :class:`FixedNoise`, :class:`RescaledNoise`,
:func:`log_gradient_noise`, :class:`UnitDirectionNoise`.
"""
from .classic import FISTA, ISTA, Unrolled
from .glow_prox import GlowProx, UnitDirectionNoise
from .lista import ALISTA, LISTA, LISTA_CP
from .noise import FixedNoise, LogGradientNoise, RescaledNoise, log_gradient_noise

__all__ = ["Unrolled", "ISTA", "FISTA", "LISTA", "LISTA_CP", "ALISTA", "FixedNoise", "LogGradientNoise",
           "RescaledNoise", "log_gradient_noise", "GlowProx", "UnitDirectionNoise"]
