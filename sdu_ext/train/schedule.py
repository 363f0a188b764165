"""The primal learning-rate schedule of :class:`~sdu_ext.train.PrimalDualTrainer`: reduce on plateau."""
from typing import Any, Dict, Optional

import torch

__all__ = ["PlateauSchedule", "LR_SCHEDULES"]

LR_SCHEDULES = (None, "plateau")


class PlateauSchedule:
    """Multiply the primal learning rate by ``factor`` when the monitored loss has not improved
    for ``patience`` epochs; after ``reductions`` reductions the next plateau asks to stop.

    An epoch's loss ``v`` improves on the best so far ``b`` when ``v < b - threshold * |b|``
    (a relative decrease of more than ``threshold``); it then becomes the new best and the
    count of epochs without improvement restarts. When that count reaches ``patience`` it
    restarts too, and the learning rate of every parameter group is multiplied by ``factor``
    (while fewer than ``reductions`` were made) or :meth:`step` returns True (a plateau at the
    smallest learning rate: the trainer stops).

    The state (``best``, ``bad_epochs``, ``reductions_done``) is plain Python, saved in ``last.pt``;
    the learning rate itself lives in the optimizer's state_dict.
    """

    def __init__(self, factor: float, patience: int, threshold: float, reductions: int):
        self.factor, self.patience, self.threshold, self.reductions = factor, patience, threshold, reductions
        self.best: Optional[float] = None
        self.bad_epochs = 0
        self.reductions_done = 0

    def step(self, loss: float, optimizer: torch.optim.Optimizer) -> bool:
        """Record one epoch's ``loss`` (a finite float); reduce ``optimizer``'s learning rates when
        a plateau is reached. Returns True when the plateau comes after the last allowed reduction."""
        if self.best is None or loss < self.best - self.threshold * abs(self.best):
            self.best, self.bad_epochs = float(loss), 0
            return False
        self.bad_epochs += 1
        if self.bad_epochs < self.patience:
            return False
        self.bad_epochs = 0
        if self.reductions_done >= self.reductions:
            return True
        self.reductions_done += 1
        for group in optimizer.param_groups:
            group["lr"] = group["lr"] * self.factor
        return False

    def state_dict(self) -> Dict[str, Any]:
        return {"best": self.best, "bad_epochs": self.bad_epochs, "reductions_done": self.reductions_done}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.best = None if state["best"] is None else float(state["best"])
        self.bad_epochs, self.reductions_done = int(state["bad_epochs"]), int(state["reductions_done"])


def make_schedule(config) -> Optional[PlateauSchedule]:
    """The schedule of a :class:`~sdu_ext.train.TrainConfig` (None when ``lr_schedule`` is None)."""
    if config.lr_schedule is None:
        return None
    return PlateauSchedule(config.lr_factor, config.lr_patience, config.lr_threshold, config.lr_reductions)
