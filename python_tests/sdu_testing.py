"""Shared tables and helpers of the sdu_ext test suite (imported by the test modules).

Everything that is table-driven across the suite lives here: the dtype and device
lists, the per-dtype tolerances, random-input construction with a recorded seed,
layout (non-contiguous view) construction and the comparison helper.
"""
import contextlib

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()

DTYPES = [
    pytest.param(torch.float32, id="float32"),
    pytest.param(torch.float64, id="float64"),
    pytest.param(torch.float16, id="float16"),
    pytest.param(torch.bfloat16, id="bfloat16"),
]

# CUDA variants are collected everywhere and SKIP (never fail) without a GPU.
DEVICES = [
    "cpu",
    pytest.param(
        "cuda",
        marks=[pytest.mark.cuda, pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device visible")],
    ),
]

FORMS = ("mean_ratio", "ratio_of_means", "difference")

# Tolerances of the fast ops against the float64 reference evaluated on the SAME inputs
# (low-precision inputs are upcast, never redrawn). The check is elementwise
#     |actual - expected| <= atol * scale + rtol * |expected|
# where `scale` is the magnitude of the quantity (default: max |expected|; ops whose
# result cancels pass the magnitude of the terms instead).
#   float64: only summation-order differences (~n * 2**-53).
#   float32: summation order in float32 accumulators.
#   float16: the op computes in float32 and rounds its output once (unit roundoff
#            2**-11 ~ 4.9e-4); composite ops (norms -> ratios -> backward) round a few
#            intermediates to float16, so allow ~4 units.
#   bfloat16: the same with unit roundoff 2**-8 ~ 3.9e-3.
TOL = {
    torch.float64: dict(rtol=1e-12, atol=1e-12),
    torch.float32: dict(rtol=1e-5, atol=1e-6),
    torch.float16: dict(rtol=2e-3, atol=2e-3),
    torch.bfloat16: dict(rtol=1.6e-2, atol=1.6e-2),
}

# Distance to a kink (|x| == theta, |grad| == alpha, ...) below which a low-precision
# rounding could flip the branch; upstream gradients are zeroed there in the
# agreement tests so both sides of the kink give the same gradient.
KINK_MARGIN = {
    torch.float64: 1e-9,
    torch.float32: 1e-4,
    torch.float16: 2e-2,
    torch.bfloat16: 1e-1,
}


class Rng:
    """Fresh random inputs from a seed that is recorded in failure messages."""

    def __init__(self, seed):
        self.seed = seed
        self.gen = torch.Generator().manual_seed(seed)

    def __repr__(self):
        return f"seed={self.seed} (rerun with SDU_TEST_SEED={self.seed})"

    # float64 draws on the CPU; convert afterwards so every dtype/device sees the
    # same generator stream.
    def randn(self, *shape):
        return torch.randn(tuple(shape), generator=self.gen, dtype=torch.float64)

    def rand(self, *shape, low=0.0, high=1.0):
        return low + (high - low) * torch.rand(tuple(shape), generator=self.gen, dtype=torch.float64)

    def randint(self, low, high, shape):
        return torch.randint(low, high, shape, generator=self.gen)

    def make(self, shape, dtype=torch.float64, device="cpu", layout="contiguous", kind="randn",
             low=0.0, high=1.0):
        """A tensor of `shape` whose memory layout is `layout`:

        contiguous | transposed (last two dims swapped in memory, needs dim >= 2)
        | strided (every other element of the last dim) | permuted (first two dims
        swapped in memory, needs dim >= 2).
        """
        shape = tuple(shape)
        draw = self.randn if kind == "randn" else (lambda *s: self.rand(*s, low=low, high=high))
        if layout == "contiguous":
            t = draw(*shape)
        elif layout == "transposed":
            assert len(shape) >= 2
            t = draw(*shape[:-2], shape[-1], shape[-2]).transpose(-1, -2)
        elif layout == "permuted":
            assert len(shape) >= 2
            t = draw(shape[1], shape[0], *shape[2:]).transpose(0, 1)
        elif layout == "strided":
            t = draw(*shape[:-1], 2 * shape[-1])[..., ::2]
        else:
            raise AssertionError(f"unknown layout {layout}")
        assert tuple(t.shape) == shape
        # Round to the dtype (and move) without touching the layout.
        out = torch.empty_strided(t.shape, t.stride(), dtype=dtype, device=device)
        out.copy_(t)
        if layout != "contiguous" and t.numel() > 1 and min(shape) > 1:
            assert not out.is_contiguous(), "layout helper failed to build a non-contiguous view"
        return out


@contextlib.contextmanager
def torch_threads(n):
    """Run the block with ``torch.set_num_threads(n)``; the previous count is restored after
    (also when the block, e.g. the CLI's ``--threads``, changed it)."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def up(t):
    """float64 CPU copy of t (the same values, upcast), detached, for the reference."""
    return t.detach().to(device="cpu", dtype=torch.float64)


def up_grad(t):
    """Like `up` but a leaf requiring grad (for reference autograd)."""
    return up(t).requires_grad_(True)


def check(actual, expected, dtype, rng, what, scale=None, equal_nan=False, tol=None):
    """Compare `actual` (any dtype/device) to the float64 `expected` under TOL[dtype]."""
    tol = dict(TOL[dtype] if tol is None else tol)
    a = actual.detach().to(device="cpu", dtype=torch.float64)
    e = expected.detach().to(device="cpu", dtype=torch.float64)
    if scale is None:
        finite = e[torch.isfinite(e)]
        scale = float(finite.abs().max()) if finite.numel() else 0.0
    scale = float(scale)
    torch.testing.assert_close(
        a, e, rtol=tol["rtol"], atol=tol["atol"] * scale, equal_nan=equal_nan,
        msg=lambda m: f"{what} [{dtype}, scale={scale:.3g}, {rng!r}]:\n{m}",
    )


def kink_mask(distance, dtype, scale=1.0):
    """1.0 where `distance` to a kink exceeds the dtype's margin (times scale), else 0.0."""
    return (distance.abs() > KINK_MARGIN[dtype] * scale).to(torch.float64)


def theta_shape(kind, x_shape):
    """Shape of a theta of `kind` for an input of `x_shape` (None: Python scalar)."""
    d = x_shape[-1]
    return {
        "python": None,
        "0d": (),
        "one": (1,),
        "row": (d,),
        "row2d": (1,) * (len(x_shape) - 1) + (d,),
        "col": tuple(x_shape[:-1]) + (1,),
        "full": tuple(x_shape),
        "mid": (x_shape[-2], 1) if len(x_shape) >= 2 else (1,),
    }[kind]


def assert_finite(t, what, rng):
    bad = ~torch.isfinite(t)
    assert not bad.any(), f"{what}: {int(bad.sum())} non-finite entries [{rng!r}]\n{t}"
