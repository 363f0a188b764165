"""Sparse-coding problems: the LASSO objective and offline data sets."""
from .lasso import Lasso

__all__ = ["Lasso"]
