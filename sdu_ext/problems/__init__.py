"""Sparse-coding problems: the LASSO objective and offline data sets."""
from .datasets import DatasetConfig, SparseCodingData, Split, load, patches, synthetic
from .lasso import Lasso

__all__ = ["Lasso", "DatasetConfig", "SparseCodingData", "Split", "load", "synthetic", "patches"]
