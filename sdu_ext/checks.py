"""Argument checks of the configuration dataclasses. Each raises ValueError naming the
argument, the expected value and the received one.

Integers are Python ints (not bools): configurations are hashed as JSON and stored in
checkpoints, where other integer types do not round-trip.
"""
import math


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


def check_choice(value, name, choices):
    """ValueError naming the ``choices`` unless ``value`` is one of them."""
    if value not in choices:
        raise ValueError(f"{name}: expected one of {', '.join(map(repr, choices))}, got {value!r}")
