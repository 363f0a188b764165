"""Argument checks of the whole package. Each raises ValueError naming the argument, the
expected value and the received one.

Integers of configurations are Python ints (not bools): configurations are hashed as JSON
and stored in checkpoints, where other integer types do not round-trip.
"""
import math
import numbers
import os

import torch

__all__ = ["check_int", "check_real", "check_choice", "check_eps", "check_layers", "check_count", "check_positive",
           "check_instance", "check_callable", "check_directory", "check_number", "check_finite_tensor",
           "check_tensor", "check_training_data", "check_generator", "choices", "describe", "is_int", "is_real",
           "is_plain_real"]


def choices(values):
    """``"'a', 'b'"``: the allowed values of a choice, for messages."""
    return ", ".join(repr(v) for v in values)


def is_int(value):
    """True for any integral number except bool (numpy integers included)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_real(value):
    """True for any real number except bool (numpy floats included)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def is_plain_real(value):
    """True for a Python int or float (not bool): the numbers that round-trip through JSON."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def describe(t):
    """``"(2, 3) torch.float32 on cpu"`` for a tensor, else the type's name (for messages)."""
    return f"{tuple(t.shape)} {t.dtype} on {t.device}" if isinstance(t, torch.Tensor) else type(t).__name__


def check_int(value, name, low=1):
    """ValueError unless ``value`` is an int >= ``low``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name}: expected an integer >= {low}, got {value!r}")


def check_real(value, name, low=0.0, strict=False):
    """ValueError unless ``value`` is a finite int or float >= ``low`` (> ``low`` when ``strict``)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) \
        and (value > low if strict else value >= low)
    if not ok:
        raise ValueError(f"{name}: expected a finite number {'>' if strict else '>='} {low:g}, got {value!r}")


def check_choice(value, name, options):
    """ValueError naming the ``options`` unless ``value`` is one of them."""
    if value not in options:
        raise ValueError(f"{name}: expected one of {choices(options)}, got {value!r}")


def check_eps(eps, name="eps"):
    """Return ``float(eps)`` if it is a number in [0, 1), else raise ValueError naming ``name``."""
    if not is_real(eps) or not 0.0 <= float(eps) < 1.0:
        raise ValueError(f"{name}: expected a number in [0, 1), got {eps!r}")
    return float(eps)


def check_count(value, name, low=1):
    """Return ``int(value)`` if it is an integer (a Python or numpy integer, not bool) >= ``low``,
    else raise ValueError naming ``name`` (e.g. a ``batch_size`` of 0, -1 or 1.5)."""
    if not is_int(value) or value < low:
        raise ValueError(f"{name}: expected an integer >= {low}, got {value!r}")
    return int(value)


def check_layers(num_layers, name="num_layers"):
    """Return ``int(num_layers)`` if it is an integer >= 1, else raise ValueError."""
    return check_count(num_layers, name)


def check_positive(value, name):
    """Return ``float(value)`` if it is a finite number > 0, else raise ValueError naming ``name``."""
    return check_number(value, name, low=0.0, strict=True, what="a positive number")


def _shown(value):
    """A short account of a received value for messages: repr of scalars, shape of tensors."""
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)}"
    if value is None or isinstance(value, (numbers.Number, str)):
        return repr(value)
    return f"a {type(value).__name__}"


def check_number(value, name, low=None, strict=False, what=None, finite=True):
    """Return ``float(value)`` for a real number (a Python or numpy number, not bool, or a
    one-element floating/integer tensor) within the bound, else raise ValueError.

    ``low``: lower bound (``strict``: value > low, else value >= low); ``what``: how the
    message states the bound (default ``"a number >= low"``); ``finite``: reject +-inf.
    NaN fails the bound (or, without one, the finiteness check).
    """
    raw = value
    if isinstance(value, torch.Tensor) and value.numel() == 1 and value.dtype != torch.bool \
            and not value.is_complex():
        value = value.item()
    if not is_real(value):
        raise ValueError(f"{name}: expected a real number, got {_shown(raw)}")
    v = float(value)
    if low is not None and not (v > low if strict else v >= low):
        what = what or f"a number {'>' if strict else '>='} {low:g}"
        raise ValueError(f"{name}: expected {what}, got {_shown(value)}")
    if finite and not math.isfinite(v):
        raise ValueError(f"{name}: expected a finite number, got {_shown(value)}")
    return v


def check_finite_tensor(t, name):
    """ValueError naming ``name`` and counting the NaN and infinite entries unless every
    entry of the floating tensor ``t`` is finite (one pass over ``t``)."""
    if bool(torch.isfinite(t).all()):
        return t
    nan, inf = int(torch.isnan(t).sum()), int(torch.isinf(t).sum())
    parts = [f"{k} {w}" for k, w in ((nan, "NaN"), (inf, "infinite")) if k]
    raise ValueError(f"{name}: expected finite entries, got {' and '.join(parts)} of {t.numel()} "
                     f"in shape {tuple(t.shape)}")


def check_instance(value, name, cls, what):
    """ValueError ``"{name}: expected {what}, got <type>"`` unless ``value`` is a ``cls``."""
    if not isinstance(value, cls):
        raise ValueError(f"{name}: expected {what}, got {type(value).__name__}")
    return value


def check_tensor(value, name, what="a tensor", dims=None):
    """Return ``value`` if it is a ``torch.Tensor`` (with ``dims`` dimensions, an int or a tuple
    of them, when given), else raise ValueError ``"{name}: expected {what}, got <received>"``
    (the type's name, e.g. ``list``, or the tensor's shape, dtype and device)."""
    ok = isinstance(value, torch.Tensor)
    if ok and dims is not None:
        ok = value.dim() in ((dims,) if isinstance(dims, int) else tuple(dims))
    if not ok:
        raise ValueError(f"{name}: expected {what}, got {describe(value)}")
    return value


def _rows_of_numbers(value):
    """True for a numpy array or a list/tuple of lists/tuples (rows) of Python numbers: data
    given where a tensor is due (a sample of plain numbers, one level deep, is not)."""
    if type(value).__module__ == "numpy" and hasattr(value, "shape"):
        return True
    depth = 0
    while isinstance(value, (list, tuple)) and value:
        value, depth = value[0], depth + 1
    return depth >= 2 and is_real(value)


def check_training_data(data, name):
    """Return ``data`` unless it is one of the mistakes that a trainer would otherwise meet
    only at its first batch, then raise ValueError naming ``name``:

    - a single tensor (a tuple such as ``(x, y_star)`` is due; ``(x,)`` for a loss that
      needs no targets);
    - a tuple or list holding rows of Python numbers or numpy arrays in place of tensors,
      e.g. ``(x.tolist(), y.tolist())`` (else read as a data set of two samples), or a mix of
      tensors and other values such as ``(x, y.tolist())``.

    Everything else is left to the trainer's own checks: tuples of tensors (with one first
    dimension), ``TensorDataset`` and map-style datasets, e.g. a list of ``(x_b, y_b)``
    samples whose first entries are tensors."""
    expected = "a tuple of tensors with one first dimension such as (x (N, n), y_star (N, m)), or a Dataset"
    if isinstance(data, torch.Tensor):
        raise ValueError(f"{name}: expected {expected}, got a single tensor of shape {tuple(data.shape)}; "
                         "pass (x, y_star), or (x,) for a loss that needs no targets")
    if isinstance(data, (tuple, list)) and not all(isinstance(t, torch.Tensor) for t in data):
        tensors = any(isinstance(t, torch.Tensor) for t in data)
        bad = [i for i, t in enumerate(data) if not isinstance(t, torch.Tensor) and (tensors or _rows_of_numbers(t))]
        if bad:
            got = ", ".join(f"{name}[{i}] a {type(data[i]).__name__}" for i in bad)
            raise ValueError(f"{name}: expected {expected}, got {got} (convert with torch.as_tensor)")
    return data


def check_generator(generator, name="generator"):
    """ValueError unless ``generator`` is None or a ``torch.Generator``."""
    if generator is not None and not isinstance(generator, torch.Generator):
        raise ValueError(f"{name}: expected a torch.Generator or None, got {type(generator).__name__}")
    return generator


def check_callable(value, name):
    """ValueError unless ``value`` is None or callable."""
    if value is not None and not callable(value):
        raise ValueError(f"{name}: expected a callable, got {type(value).__name__}")
    return value


def check_directory(path, name):
    """ValueError unless ``path`` is None or a directory that exists or can be created: the
    path itself and its nearest existing ancestor must not be files."""
    if path is None:
        return None
    if not isinstance(path, (str, os.PathLike)) or not os.fspath(path):
        raise ValueError(f"{name}: expected a directory path or None, got {path!r}")
    probe = os.path.abspath(os.fspath(path))
    while not os.path.exists(probe) and os.path.dirname(probe) != probe:
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        where = "" if probe == os.path.abspath(os.fspath(path)) else f" inside {probe!r}, which is"
        raise ValueError(f"{name}: expected a directory, got {os.fspath(path)!r},{where} a file")
    return path
