"""Training configuration (SPEC section 4): one dataclass, validated when built."""
import dataclasses
import inspect
import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple

import torch

from ..checks import check_eps, choices, is_int, is_real
from .schedule import LR_SCHEDULES

__all__ = ["TrainConfig", "MODES", "DUAL_EVERY", "RESUMABLE", "DEPRECATED_MODES", "check_eps"]

MODES = ("constrained", "standard", "noisy", "layerwise")
# Old names of modes, still accepted (and found in old checkpoints).
DEPRECATED_MODES = {"unconstrained": "standard"}
DUAL_EVERY = ("batch", "epoch")
AUTOCAST = (None, "bfloat16", "float16")
MATMUL_PRECISION = (None, "highest", "high", "medium")
# torch.compile's modes ("reduce-overhead" and "max-autotune": CUDA graphs on a GPU)
COMPILE_MODES = (None, "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")

# Fields a resumed run may change: they do not alter the trajectory of the run
# (``compile`` only up to rounding; ``epochs`` only extends it; the layer-wise stage plan depends on it, so a
# layer-wise run must keep it).
# ``lr_reductions`` likewise only moves the end of a run that has not stopped yet.
RESUMABLE = ("epochs", "patience", "restore_best", "device", "checkpoint_dir", "log_dir",
             "progress", "tensorboard", "lr_reductions", "check_every", "compile", "resident_data")


@dataclass
class TrainConfig:
    """Everything that shapes a training run. Invalid values raise ValueError naming the field.

    Optimisation:
        epochs: passes over the training set (>= 0).
        batch_size: global mini-batch size (>= 1); under DDP it is split across the ranks.
        lr: primal learning rate (SPEC: 1e-5 in the research code).
        optimizer: name of a ``torch.optim`` class for the weights (``"Adam"``), built as
            ``cls(params, lr=lr, **optimizer_kwargs)``; the trainer also accepts a factory.
            ``Adam``/``AdamW`` run fused (one kernel) where the device supports it, unless
            ``optimizer_kwargs`` sets ``fused``/``foreach``/``differentiable``: it agrees with
            the single-tensor loop to a few ulps per step (see ``sdu_ext.train.optim``).
        lr_dual: dual step size (>= 0); ``nu <- max(0, nu + lr_dual * c_hat)``.
        dual_every: ``"batch"`` (c_hat = the current batch's constraint values) or
            ``"epoch"`` (c_hat = a no-grad estimate over the whole training set, taken
            after each epoch's primal pass with the training noise; the research LISTA code).
        drop_last: drop the last, incomplete batch of every epoch. Under DDP a last
            batch with fewer samples than ranks is always dropped.
        shuffle: draw a new order of the training samples every epoch (seeded, the same
            on every rank); False takes them in their stored order.
        autocast: None, ``"bfloat16"`` or ``"float16"``: run the model's forward under
            ``torch.autocast`` in that dtype; the iterates are then upcast to float32 (at least)
            for the loss and the constraints, and the multipliers stay float64.
        lr_schedule: None (constant ``lr``) or ``"plateau"``: after each epoch the monitored loss
            (the noise-free validation loss; without ``val_data`` the epoch's mean training
            batch loss) is compared with its best so far; when it has not decreased by more
            than ``lr_threshold`` (relative: ``v < best - lr_threshold * |best|``) for
            ``lr_patience`` epochs in a row, the primal learning rate (every parameter group)
            is multiplied by ``lr_factor`` and the count restarts. After ``lr_reductions``
            reductions the next such plateau stops training (early stop: ``restore_best``
            applies as usual). The history's ``lr`` column is the rate used in each epoch.
            In layer-wise mode each stage starts again from ``lr`` with a fresh schedule, and
            a plateau after the last reduction stops only in the last stage (before it the
            rate is held). The dual step size ``lr_dual`` is not scheduled.
        lr_factor: multiplier of a reduction, in (0, 1) (default 0.3).
        lr_patience: epochs without improvement that make a plateau, >= 1 (default 3).
        lr_threshold: relative improvement required, finite >= 0 (default 1e-3).
        lr_reductions: reductions before a plateau stops training, >= 0 (default 3).
    Method:
        mode: ``"constrained"`` (task loss on the last layer + descent constraints;
            noise between layers when the trainer is given a noise hook),
            ``"standard"`` (standard unrolling: loss on the last layer only, no noise;
            ``"unconstrained"`` is a deprecated alias),
            ``"noisy"`` (standard unrolling with the noise hook active in training) or
            ``"layerwise"`` (the epochs are split evenly into L stages; stage k trains on
            the loss of layer k's output; see ``layerwise_finetune``).
        eps: required decrease per layer for every constraint group, or None to use
            each :class:`~sdu_ext.train.DescentConstraints`' own ``eps``.
        eps_schedule: None, or milestones ``((epoch, eps), ...)`` (0-based epochs,
            increasing): eps is interpolated linearly between milestones and held
            constant outside them; overrides ``eps``.
        resilient: relax each constraint to ``c_l <= u_l`` with a learned slack
            ``u_l >= 0`` that pays ``resilient_cost / 2 * u_l^2``; the slack takes a
            projected gradient step (size ``lr_dual``) with every dual step.
        layerwise_finetune: in layer-wise mode, False trains only layer k's parameters
            in stage k (earlier layers frozen); True trains every parameter against the
            loss of layer k (earlier layers fine-tuned). Each stage starts a fresh optimizer.
    Bookkeeping:
        seed: seeds, at the start of a fresh run, the global torch RNG (``seed + rank``),
            the noise hook's own ``generator`` if it has one, and the per-epoch shuffling
            generator; None draws a random seed (recorded in the checkpoint, so a resumed
            run still reproduces). A resume restores every RNG state instead.
        patience: stop after this many epochs without a better validation loss (None: never).
        restore_best: load the weights with the best noise-free validation loss at the end.
        device: where the model and batches live (``"cuda"`` under DDP means ``cuda:LOCAL_RANK``).
        checkpoint_dir: where ``last.pt`` (resumable state, every epoch) and ``best.pt``
            (best weights) are written; None writes nothing (and cannot resume).
        log_dir: where ``history.csv`` / ``history.json`` (and TensorBoard events when
            ``tensorboard`` and the package is installed) are written; None: no files.
        progress: show tqdm progress bars (rank 0 only); the batch bar shows the loss of the
            last step at each finiteness read (every ``check_every`` batches).
        check_every: read the finiteness checks on the host every this many steps (>= 1,
            default 1). Each step keeps on the device a flag that its task loss, the constraint
            values that enter the Lagrangian and (after a dual step) the multipliers are finite,
            and what names a failure; the flags are read every ``check_every`` steps and at the
            end of every epoch, before anything is logged or checkpointed. With 1 a step stops
            at once (before its weight update); with k > 1 the error comes up to k - 1 steps
            later, naming the same first bad epoch, batch, layer and group, and no step reads
            the host in between (no synchronisation with an accelerator), at the cost of a
            max/min pass over the iterates per step. Training itself (weights, multipliers)
            does not depend on it. On the CPU a read costs nothing: keep 1 there.
        compile: None (eager) or a ``torch.compile`` mode (``"default"``, ``"reduce-overhead"``
            and ``"max-autotune"`` = with CUDA graphs on a GPU, ``"max-autotune-no-cudagraphs"``;
            under DDP only the modes without CUDA graphs, which were checked there): the
            step's forward, task loss, constraint values and Lagrangian (and so their backward)
            run compiled; the optimizer (fused Adam) and the dual step stay eager. Random draws
            keep eager's streams, so the trajectory equals the eager one up to rounding (test:
            two epochs agree to 1e-5 relative); the first steps pay the compilation. Under
            ``autocast`` the fused kernels round differently (bfloat16: weights ~1e-2 apart after
            two epochs of a small LISTA, validation loss within 0.1%).
        resident_data: keep tuple-of-tensor training and validation data on ``device`` for the
            whole run (one copy at the start) and gather every batch there, the epoch's shuffled
            order copied once per epoch; False copies each batch from where the data live.
            Map-style datasets are always collated per batch on the host.
        matmul_precision: None (torch's global setting) or ``torch.set_float32_matmul_precision``'s
            ``"highest"``, ``"high"`` or ``"medium"``, set for the training steps and estimates only
            (restored after each). On CUDA ``"high"`` runs float32 GEMMs in TF32 (10-bit mantissa
            inputs, float32 accumulation: about 1e-3 relative error per product against 1e-7); on
            a CPU without bf16 matrix units it changes nothing. Measured accuracy and speed costs:
            README, "Precision".
    """

    epochs: int = 100
    batch_size: int = 512
    lr: float = 1e-5
    optimizer: str = "Adam"
    optimizer_kwargs: Dict[str, Any] = field(default_factory=dict)
    lr_dual: float = 1e-3
    dual_every: str = "batch"
    drop_last: bool = False
    mode: str = "constrained"
    eps: Optional[float] = None
    eps_schedule: Optional[Tuple[Tuple[int, float], ...]] = None
    resilient: bool = False
    resilient_cost: float = 1.0
    layerwise_finetune: bool = False
    seed: Optional[int] = 0
    patience: Optional[int] = None
    restore_best: bool = True
    device: str = "cpu"
    checkpoint_dir: Optional[str] = None
    log_dir: Optional[str] = None
    progress: bool = False
    tensorboard: bool = True
    shuffle: bool = True
    autocast: Optional[str] = None
    lr_schedule: Optional[str] = None
    lr_factor: float = 0.3
    lr_patience: int = 3
    lr_threshold: float = 1e-3
    lr_reductions: int = 3
    check_every: int = 1
    compile: Optional[str] = None
    resident_data: bool = True
    matmul_precision: Optional[str] = None

    def __post_init__(self):
        if not is_int(self.epochs) or self.epochs < 0:
            raise ValueError(f"epochs: expected an integer >= 0, got {self.epochs!r}")
        if not is_int(self.batch_size) or self.batch_size < 1:
            raise ValueError(f"batch_size: expected an integer >= 1, got {self.batch_size!r}")
        if not is_real(self.lr) or not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr: expected a positive finite number, got {self.lr!r}")
        self._check_lr_schedule()
        if not is_real(self.lr_dual) or not (self.lr_dual >= 0 and math.isfinite(self.lr_dual)):
            raise ValueError(f"lr_dual: expected a finite number >= 0, got {self.lr_dual!r}")
        if not isinstance(self.optimizer, str) or not isinstance(getattr(torch.optim, self.optimizer, None), type) \
                or not issubclass(getattr(torch.optim, self.optimizer), torch.optim.Optimizer):
            raise ValueError(f"optimizer: expected the name of a torch.optim optimizer (e.g. 'Adam'), "
                             f"got {self.optimizer!r}")
        if not isinstance(self.optimizer_kwargs, dict) or "lr" in self.optimizer_kwargs:
            got = "a dict with 'lr' (set TrainConfig.lr)" if isinstance(self.optimizer_kwargs, dict) \
                else type(self.optimizer_kwargs).__name__
            raise ValueError(f"optimizer_kwargs: expected a dict of extra optimizer arguments, got {got}")
        self._check_optimizer_kwargs()
        if self.dual_every not in DUAL_EVERY:
            raise ValueError(f"dual_every: expected one of {choices(DUAL_EVERY)}, got {self.dual_every!r}")
        if self.mode in DEPRECATED_MODES:
            warnings.warn(f"mode: {self.mode!r} is deprecated, use {DEPRECATED_MODES[self.mode]!r}",
                          DeprecationWarning, stacklevel=3)
            self.mode = DEPRECATED_MODES[self.mode]
        if self.autocast not in AUTOCAST:
            raise ValueError(f"autocast: expected one of {choices(AUTOCAST)}, got {self.autocast!r}")
        if self.compile not in COMPILE_MODES:
            raise ValueError(f"compile: expected one of {choices(COMPILE_MODES)}, got {self.compile!r}")
        if self.matmul_precision not in MATMUL_PRECISION:
            raise ValueError(f"matmul_precision: expected one of {choices(MATMUL_PRECISION)}, "
                             f"got {self.matmul_precision!r}")
        if not isinstance(self.resident_data, bool):
            raise ValueError(f"resident_data: expected True or False, got {self.resident_data!r}")
        if not isinstance(self.shuffle, bool):
            raise ValueError(f"shuffle: expected True or False, got {self.shuffle!r}")
        if self.mode not in MODES:
            raise ValueError(f"mode: expected one of {choices(MODES)}, got {self.mode!r}")
        if self.eps is not None:
            self.eps = check_eps(self.eps)
        if self.eps_schedule is not None:
            self.eps_schedule = self._check_schedule(self.eps_schedule)
        if not is_real(self.resilient_cost) or not (self.resilient_cost > 0 and math.isfinite(self.resilient_cost)):
            raise ValueError(f"resilient_cost: expected a positive finite number, got {self.resilient_cost!r}")
        if self.seed is not None and not is_int(self.seed):
            raise ValueError(f"seed: expected an integer or None, got {self.seed!r}")
        if not is_int(self.check_every) or self.check_every < 1:
            raise ValueError(f"check_every: expected an integer >= 1, got {self.check_every!r}")
        if self.patience is not None and (not is_int(self.patience) or self.patience < 1):
            raise ValueError(f"patience: expected an integer >= 1 or None, got {self.patience!r}")
        try:
            torch.device(self.device)
        except (RuntimeError, TypeError):
            raise ValueError(f"device: expected a torch device string such as 'cpu' or 'cuda', "
                             f"got {self.device!r}") from None

    def _check_lr_schedule(self):
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule: expected one of {choices(LR_SCHEDULES)}, got {self.lr_schedule!r}")
        if not is_real(self.lr_factor) or not 0 < self.lr_factor < 1:
            raise ValueError(f"lr_factor: expected a number in (0, 1), got {self.lr_factor!r}")
        if not is_int(self.lr_patience) or self.lr_patience < 1:
            raise ValueError(f"lr_patience: expected an integer >= 1, got {self.lr_patience!r}")
        if not is_real(self.lr_threshold) or not (self.lr_threshold >= 0 and math.isfinite(self.lr_threshold)):
            raise ValueError(f"lr_threshold: expected a finite number >= 0, got {self.lr_threshold!r}")
        if not is_int(self.lr_reductions) or self.lr_reductions < 0:
            raise ValueError(f"lr_reductions: expected an integer >= 0, got {self.lr_reductions!r}")

    def _check_optimizer_kwargs(self):
        """Build the optimizer once on a dummy parameter, so a bad argument fails here, not in fit()."""
        cls = getattr(torch.optim, self.optimizer)
        known = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "params", "lr")]
        unknown = sorted(set(self.optimizer_kwargs) - set(known))
        if unknown:
            raise ValueError(f"optimizer_kwargs: expected arguments of torch.optim.{self.optimizer} "
                             f"({', '.join(known)}), got {', '.join(map(repr, unknown))}")
        try:
            cls([torch.zeros(1, requires_grad=True)], lr=self.lr, **self.optimizer_kwargs)
        except (TypeError, ValueError, RuntimeError) as e:
            raise ValueError(f"optimizer_kwargs: torch.optim.{self.optimizer} rejects "
                             f"{self.optimizer_kwargs!r} ({e})") from None

    @staticmethod
    def _check_schedule(schedule):
        try:
            points = tuple((int(e), float(v)) for e, v in schedule)
        except (TypeError, ValueError):
            raise ValueError(f"eps_schedule: expected milestones ((epoch, eps), ...), got {schedule!r}") from None
        if not points:
            raise ValueError("eps_schedule: expected at least one (epoch, eps) milestone, got none")
        for e, v in points:
            check_eps(v, f"eps_schedule (epoch {e})")
        epochs = [e for e, _ in points]
        if epochs[0] < 0 or any(b <= a for a, b in zip(epochs, epochs[1:])):
            raise ValueError(f"eps_schedule: expected strictly increasing epochs >= 0, got {epochs}")
        return points

    def eps_at(self, epoch: int) -> Optional[float]:
        """The eps override for 0-based ``epoch``: from the schedule, else ``eps`` (may be None)."""
        if self.eps_schedule is None:
            return self.eps
        points = self.eps_schedule
        if epoch <= points[0][0]:
            return points[0][1]
        for (e0, v0), (e1, v1) in zip(points, points[1:]):
            if epoch <= e1:
                return v0 + (v1 - v0) * (epoch - e0) / (e1 - e0)
        return points[-1][1]

    def to_dict(self) -> Dict[str, Any]:
        """JSON-friendly dict of the fields (tuples become lists)."""
        d = dataclasses.asdict(self)
        if d["eps_schedule"] is not None:
            d["eps_schedule"] = [list(p) for p in d["eps_schedule"]]
        return d

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "TrainConfig":
        """Inverse of :meth:`to_dict`; unknown keys raise ValueError, missing ones take their
        defaults (checkpoints written before a field existed)."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"config: unknown fields {unknown}")
        return cls(**d)
