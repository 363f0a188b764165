"""Adapters to other libraries (optional extras; each module imports its library).

- :mod:`sdu_ext.integrations.cooper`: the descent-constrained training problem as a
  cooper ``ConstrainedMinimizationProblem`` (needs ``pip install cooper-optim``).
"""
__all__ = []
