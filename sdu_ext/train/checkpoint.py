"""Atomic checkpoint files (written through :mod:`sdu_ext.atomic`)."""
import io
import json
import os

import torch

from ..atomic import atomic_write_bytes

FORMAT = "sdu_ext.train/1"


def atomic_save(obj, path):
    """``torch.save(obj)`` to ``path`` atomically. ``obj`` should hold only tensors and
    plain Python containers/scalars so :func:`load_checkpoint` can read it with
    ``weights_only=True``."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(buf.getvalue(), path)


def atomic_write_text(text, path):
    """Write a text file atomically (UTF-8)."""
    atomic_write_bytes(text.encode("utf-8"), path)


def atomic_write_json(obj, path):
    """Write ``obj`` as indented JSON atomically (NaN/Infinity allowed, as Python writes them)."""
    atomic_write_text(json.dumps(obj, indent=1, allow_nan=True) + "\n", path)


def load_checkpoint(path, map_location="cpu"):
    """Load a checkpoint written by :func:`atomic_save` (``weights_only=True``).

    Raises FileNotFoundError naming ``path`` when it does not exist, and ValueError
    when the file is not a readable sdu_ext training checkpoint.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint: no file at {path!r}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 (unpickling raises many kinds)
        raise ValueError(f"checkpoint: {path!r} is not a readable checkpoint ({type(e).__name__}: {e})") from e
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        got = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise ValueError(f"checkpoint: {path!r} is not an sdu_ext training checkpoint "
                         f"(expected format {FORMAT!r}, got {got!r})")
    return state
