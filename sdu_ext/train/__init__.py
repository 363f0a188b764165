"""Primal-dual training with per-layer descent constraints (SPEC sections 3 and 4).

- :class:`DescentConstraints`: the constraint values of one residual/form, via the fused op.
- :class:`TrainConfig`: every knob of a run (a validated dataclass).
- :class:`PrimalDualTrainer`: constrained / standard / noisy / layer-wise training,
  projected dual ascent, resilient relaxation, model selection, early stopping, atomic
  resumable checkpoints, CSV/JSON logs, DDP.
- :func:`atomic_save`, :func:`load_checkpoint`: the checkpoint files.
"""
from .checkpoint import atomic_save, load_checkpoint
from .config import MODES, TrainConfig
from .constraints import RESIDUALS, ConstraintValues, DescentConstraints
from .trainer import NonFiniteError, PrimalDualTrainer, squared_error

__all__ = ["DescentConstraints", "ConstraintValues", "RESIDUALS", "TrainConfig", "MODES",
           "PrimalDualTrainer", "NonFiniteError", "squared_error", "atomic_save", "load_checkpoint"]
