"""Primal-dual training with per-layer descent constraints (SPEC sections 3 and 4).

- :class:`DescentConstraints`: the constraint values of one residual/form, via the fused op.
- :class:`Multiplier`: the non-negative multipliers of one constraint group and their
  projected dual step; :func:`constraint_values`: constraint values from per-layer sums.
- :class:`TrainConfig`: every knob of a run (a validated dataclass).
- :class:`PrimalDualTrainer`: constrained / standard / noisy / layer-wise training,
  one public :meth:`~PrimalDualTrainer.step`, projected dual ascent, resilient relaxation,
  model selection, early stopping, atomic resumable checkpoints, CSV/JSON logs, DDP.
- :func:`save_checkpoint`, :func:`load_checkpoint`: the checkpoint files (atomic, with a
  SHA-256 digest); :func:`atomic_save`: an atomic ``torch.save`` without one.
"""
from .checkpoint import atomic_save, load_checkpoint, save_checkpoint
from .config import MODES, TrainConfig
from .constraints import RESIDUALS, ConstraintValues, DescentConstraints
from .dual import Multiplier, constraint_values
from .finite import NonFiniteError
from .trainer import PrimalDualTrainer, squared_error

__all__ = ["DescentConstraints", "ConstraintValues", "RESIDUALS", "TrainConfig", "MODES", "Multiplier",
           "constraint_values", "PrimalDualTrainer", "NonFiniteError", "squared_error", "atomic_save",
           "save_checkpoint", "load_checkpoint"]
