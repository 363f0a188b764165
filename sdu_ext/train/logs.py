"""The per-epoch logs of a training run: history.json, history.csv and TensorBoard events."""
import csv
import io
import os

from .checkpoint import atomic_write_json, atomic_write_text

__all__ = ["HistoryLog", "epoch_row"]


class HistoryLog:
    """Writes the history (a list of per-epoch dict rows) to ``log_dir`` after every epoch.

    ``history.json`` holds the configuration, the metadata and every row; ``history.csv``
    every row (the union of the columns, in order of appearance); with ``tensorboard`` and
    the package installed, the numeric columns of the newest row become scalars.
    """

    def __init__(self, log_dir, tensorboard=True):
        self.log_dir, self.tensorboard = log_dir, tensorboard
        self._writer = None

    def write(self, config, metadata, history):
        """Rewrite the files for ``history`` (``config``: a JSON-friendly dict)."""
        if self.log_dir is None or not history:
            return
        atomic_write_json({"config": config, "metadata": metadata, "history": history},
                          os.path.join(self.log_dir, "history.json"))
        buf = io.StringIO()
        fields = list(history[0])
        for row in history[1:]:
            fields += [k for k in row if k not in fields]
        writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
        writer.writeheader()
        writer.writerows(history)
        atomic_write_text(buf.getvalue(), os.path.join(self.log_dir, "history.csv"))
        if self.tensorboard:
            if self._writer is None:
                try:
                    from torch.utils.tensorboard import SummaryWriter
                except ImportError:
                    return
                self._writer = SummaryWriter(self.log_dir)
            row = history[-1]
            for k, v in row.items():
                if k != "epoch" and isinstance(v, (int, float)) and not isinstance(v, bool):
                    self._writer.add_scalar(k, v, row["epoch"])
            self._writer.flush()

    def close(self):
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def epoch_row(epoch, stage, lr, mode, groups, duals, eps, train_stats, val_stats, batch_loss, lagrangian,
              improved, seconds):
    """The history row of 0-based ``epoch``: its stage (layer-wise), learning rate, mean batch
    loss, Lagrangian (constrained), validation loss, whether it is the best so far, and per
    group (columns prefixed ``<name>_`` when there are several) eps, the constraint values
    ``c_train_l``/``c_val_l``, the descending fractions ``desc_train_l``/``desc_val_l`` and
    (constrained) the multipliers; ``train_stats``/``val_stats`` are
    :class:`~sdu_ext.train.constraints.Stats` (``val_stats`` may be None)."""
    row = {"epoch": epoch + 1}
    if stage is not None:
        row["stage"] = stage
    row["lr"] = lr
    row["train_loss"] = batch_loss
    if mode == "constrained":
        row["lagrangian"] = lagrangian
    if val_stats is not None:
        row["val_loss"] = val_stats.loss()
    row["best"] = bool(improved)
    for i, g in enumerate(groups):
        p = "" if len(groups) == 1 else f"{g.name}_"
        row[f"{p}eps"] = eps[i]
        parts = [("c_train", train_stats.values(i, eps[i]))]
        if val_stats is not None:
            parts.append(("c_val", val_stats.values(i, eps[i])))
        parts.append(("desc_train", train_stats.descending(i)))
        if val_stats is not None:
            parts.append(("desc_val", val_stats.descending(i)))
        for name, values in parts:
            row.update({f"{p}{name}_{l + 1}": v for l, v in enumerate(values.tolist())})
        if mode == "constrained":
            row.update(duals[i].log_columns(p))
    row["time_s"] = seconds
    return row
