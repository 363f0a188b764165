"""Stopping on NaN/Inf: the error and the checks of the loss, constraint values and multipliers."""
import math

import torch

__all__ = ["NonFiniteError", "check_loss", "check_values", "check_multipliers"]


class NonFiniteError(FloatingPointError):
    """Training produced a NaN/Inf task loss, constraint value or multiplier.

    Attributes: ``epoch`` (1-based), ``layer`` (1-based, or None when no layer is at fault).
    """

    def __init__(self, message, epoch=None, layer=None):
        super().__init__(message)
        self.epoch = epoch
        self.layer = layer


def _fail(what, epoch, layer=None, extra=""):
    where = f"epoch {epoch + 1}" + (f", layer {layer}" if layer is not None else "")
    raise NonFiniteError(f"training stopped: non-finite {what} at {where}{extra}", epoch + 1, layer)


def check_loss(value, iterates, epoch, batch_index, what="task loss"):
    """NonFiniteError unless the float ``value`` is finite; ``iterates`` (L+1, B, ...) or None
    locate the first layer with a non-finite output. ``epoch``, ``batch_index``: 0-based."""
    if math.isfinite(value):
        return
    layer, extra = None, ""
    if iterates is not None:
        bad = (~torch.isfinite(iterates.detach()).flatten(2).all(dim=2)).any(dim=1)
        hits = torch.nonzero(bad).flatten().tolist()
        if hits:
            layer = hits[0]
            extra = f" (the first non-finite iterate is the output of layer {layer}" + \
                    (" (the initial point)" if layer == 0 else "") + ")"
        else:
            extra = " (all iterates are finite: the loss function produced it)"
    if batch_index is not None:
        extra = f", batch {batch_index + 1}" + extra
    _fail(f"{what} ({value})", epoch, layer, extra)


def check_values(groups, active, c_all, epoch, batch_index, what="constraint value"):
    """NonFiniteError on the first non-finite value (L,) of ``c_all`` (one per group) among the
    0-based ``active`` layers of its group (the values that enter the Lagrangian)."""
    for g, act, c in zip(groups, active, c_all):
        bad = [l for l in torch.nonzero(~torch.isfinite(c)).flatten().tolist() if l in act]
        if bad:
            l = bad[0]
            extra = "" if batch_index is None else f", batch {batch_index + 1}"
            _fail(f"{what} c_{l + 1} ({float(c[l])}) of group {g.name!r}", epoch, l + 1, extra)


def check_multipliers(groups, duals, epoch, when):
    """NonFiniteError on the first non-finite multiplier or slack of the :class:`Multiplier` s."""
    for g, dual in zip(groups, duals):
        bad = dual.nonfinite()
        if bad is not None:
            what, l, value = bad
            _fail(f"{what}_{l} ({value}) of group {g.name!r}", epoch, l, f" ({when})")


def check_state(model, optimizer, epoch):
    """NonFiniteError naming the first non-finite floating tensor of ``model``'s state_dict or
    of ``optimizer``'s state (after the last step of 0-based ``epoch``), so that no checkpoint
    is written from it."""
    named = [(f"weight {k!r}", v) for k, v in model.state_dict().items()]
    if optimizer is not None:
        named += [(f"optimizer state {k!r}", v) for st in optimizer.state.values() for k, v in st.items()]
    for what, t in named:
        if isinstance(t, torch.Tensor) and (t.is_floating_point() or t.is_complex()) \
                and not bool(torch.isfinite(t).all()):
            _fail(what, epoch, None, " (after its last step; no checkpoint was written from it, the files "
                                     "hold the previous epoch)")
