"""sdu_ext.nn: SoftThreshold and LISTALayer (learnable thresholds get gradients, a few
optimiser steps reduce a loss, state_dict round trip) and the ISTA initialisation."""
import io
import re

import pytest
import torch

from sdu_ext import nn as sdu_nn
from sdu_ext import reference as R
from sdu_testing import DEVICES, check, up


# ------------------------------------------------------------------ SoftThreshold

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("num_features", [None, 33])
@pytest.mark.parametrize("inplace", [False, True])
def test_soft_threshold_forward_and_theta_gradient(rng, device, num_features, inplace):
    mod = sdu_nn.SoftThreshold(num_features, init=0.3, inplace=inplace, device=device, dtype=torch.float64)
    assert mod.theta.shape == (() if num_features is None else (33,))
    assert mod.theta.requires_grad and (mod.theta == 0.3).all()
    x0 = rng.make((5, 33), torch.float64, device).requires_grad_()
    x = x0 * 1  # non-leaf so the in-place variant may overwrite it
    out = mod(x)
    assert (out is x) == inplace
    x64 = up(x0).requires_grad_()
    th64 = up(mod.theta).requires_grad_()
    ref = R.soft_threshold(x64, th64)
    check(out, ref, torch.float64, rng, "SoftThreshold forward")
    g = rng.randn(5, 33)
    out.backward(g.to(device))
    gx, gt = torch.autograd.grad(ref, [x64, th64], g)
    assert mod.theta.grad is not None and mod.theta.grad.shape == mod.theta.shape
    check(mod.theta.grad, gt, torch.float64, rng, "theta grad")
    check(x0.grad, gx, torch.float64, rng, "input grad")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("num_features", [None, 8])
@pytest.mark.parametrize("inplace", [False, True])
def test_soft_threshold_learns_threshold(rng, device, num_features, inplace):
    teacher_theta = 0.6 if num_features is None else torch.linspace(0.3, 0.9, 8, device=device)
    x = rng.make((256, 8), torch.float32, device) * 2
    target = R.soft_threshold(x, teacher_theta)
    mod = sdu_nn.SoftThreshold(num_features, init=0.1, inplace=inplace, device=device)
    # each per-feature threshold sees 1/8 of the entries: scale its step accordingly
    opt = torch.optim.SGD(mod.parameters(), lr=0.5 if num_features is None else 4.0)
    losses = []
    for _ in range(30):
        opt.zero_grad()
        loss = ((mod(x.clone()) - target) ** 2).mean()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.05 * losses[0], f"loss did not drop: {losses[0]} -> {losses[-1]} [{rng!r}]"
    err = (mod.theta.detach() - teacher_theta).abs().max()
    assert err < 0.05, f"theta {mod.theta.detach()} did not approach {teacher_theta} [{rng!r}]"


@pytest.mark.parametrize("device", DEVICES)
def test_soft_threshold_inplace_module_passes_gradient_upstream(rng, device):
    lin = torch.nn.Linear(6, 6, device=device)
    act = sdu_nn.SoftThreshold(6, init=0.05, inplace=True, device=device)
    x = rng.make((4, 6), torch.float32, device)
    act(lin(x)).pow(2).sum().backward()
    assert lin.weight.grad is not None and lin.weight.grad.abs().sum() > 0
    assert act.theta.grad is not None


@pytest.mark.parametrize("num_features", [None, 5])
def test_soft_threshold_state_dict_roundtrip(rng, num_features):
    a = sdu_nn.SoftThreshold(num_features, init=0.1)
    with torch.no_grad():
        a.theta.copy_(torch.rand(a.theta.shape, generator=rng.gen) + 0.2)
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    b = sdu_nn.SoftThreshold(num_features, init=0.9)
    b.load_state_dict(torch.load(buf))
    assert set(b.state_dict()) == {"theta"}
    assert torch.equal(a.theta, b.theta)
    x = rng.make((3, 5), torch.float32)
    assert torch.equal(a(x), b(x))
    assert "inplace=False" in repr(b)


# ------------------------------------------------------------------ LISTALayer

@pytest.mark.parametrize("device", DEVICES)
def test_lista_layer_parameters_get_gradients(rng, device):
    layer = sdu_nn.LISTALayer(7, 5, theta_init=0.05, device=device)
    assert layer.W1.shape == (7, 7) and layer.W2.shape == (7, 5) and layer.theta.shape == (7,)
    y = rng.make((4, 7), torch.float32, device)
    xs = rng.make((4, 5), torch.float32, device)
    out = layer(y, xs)
    assert out.shape == (4, 7)
    out.pow(2).sum().backward()
    for name, p in layer.named_parameters():
        assert p.grad is not None and p.grad.shape == p.shape, name
        assert torch.isfinite(p.grad).all(), name
    assert layer.theta.grad.abs().sum() > 0


@pytest.mark.parametrize("device", DEVICES)
def test_lista_layer_optimisation_reduces_loss(rng, device):
    torch.manual_seed(rng.seed)
    teacher = sdu_nn.LISTALayer(6, 4, theta_init=0.2, device=device)
    student = sdu_nn.LISTALayer(6, 4, theta_init=0.0, device=device)
    y = rng.make((128, 6), torch.float32, device)
    xs = rng.make((128, 4), torch.float32, device)
    with torch.no_grad():
        target = teacher(y, xs)
    opt = torch.optim.Adam(student.parameters(), lr=1e-2)
    theta0 = student.theta.detach().clone()
    losses = []
    for _ in range(60):
        opt.zero_grad()
        loss = ((student(y, xs) - target) ** 2).mean()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], f"{losses[0]} -> {losses[-1]} [{rng!r}]"
    assert not torch.equal(student.theta.detach(), theta0), "thresholds were not updated"


def test_lista_layer_state_dict_roundtrip(rng):
    torch.manual_seed(rng.seed)
    a = sdu_nn.LISTALayer(5, 3, theta_init=0.2)
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    b = sdu_nn.LISTALayer(5, 3)
    b.load_state_dict(torch.load(buf))
    assert set(b.state_dict()) == {"W1", "W2", "theta"}
    for k in ("W1", "W2", "theta"):
        assert torch.equal(getattr(a, k), getattr(b, k)), k
    y, xs = rng.make((2, 5), torch.float32), rng.make((2, 3), torch.float32)
    assert torch.equal(a(y, xs), b(y, xs))
    assert "m=5, n=3" in repr(b)


@pytest.mark.parametrize("m,n,match", [(0, 3, "m: expected an integer >= 1, got 0"),
                                        (3, 0, "n: expected an integer >= 1, got 0"),
                                        (-1, 2, "m: expected an integer >= 1, got -1"),
                                        (2.5, 2, "m: expected an integer >= 1, got 2.5")])
def test_lista_layer_rejects_bad_sizes(m, n, match):
    with pytest.raises(ValueError, match="^" + re.escape(match) + "$"):
        sdu_nn.LISTALayer(m, n)


# ------------------------------------------------------------------ ISTA initialisation

def make_dictionary(rng, n, m, device, dtype):
    D = rng.randn(n, m) / n ** 0.5
    return (D / D.norm(dim=0, keepdim=True)).to(dtype=dtype, device=device)


def ista_step(D, x, y, alpha, lip):
    """One ISTA step for 1/2||x - D y||^2 + alpha ||y||_1, by hand (rows are samples)."""
    grad = (y @ D.T - x) @ D          # D^T (D y - x) per sample
    v = y - grad / lip
    return torch.sign(v) * torch.clamp(v.abs() - alpha / lip, min=0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("lipschitz", [None, 7.5])
def test_from_dictionary_is_one_ista_step(rng, device, dtype, lipschitz):
    n, m, B, alpha = 20, 33, 6, 0.1
    D = make_dictionary(rng, n, m, device, dtype)
    layer = sdu_nn.LISTALayer.from_dictionary(D, alpha, lipschitz=lipschitz)
    lip = float(torch.linalg.matrix_norm(D.double(), ord=2) ** 2) if lipschitz is None else lipschitz
    x = rng.make((B, n), dtype, device)
    y0 = rng.make((B, m), dtype, device)
    expected = ista_step(up(D), up(x), up(y0), alpha, lip)
    check(layer(y0, x), expected, dtype, rng, "LISTA(from_dictionary) vs ISTA step",
          scale=float(expected.abs().max() + up(y0).abs().max()))
    check(layer.theta, torch.full((m,), alpha / lip, dtype=torch.float64), dtype, rng, "theta = alpha/Lip")


@pytest.mark.parametrize("device", DEVICES)
def test_stacked_ista_layers_equal_ista_iterations(rng, device):
    n, m, B, L = 16, 24, 5, 5
    D = make_dictionary(rng, n, m, device, torch.float64)
    x = rng.make((B, n), torch.float64, device)
    # alpha at the median of |D^T x|: the first step zeroes about half the entries whatever the draw,
    # so the comparison always exercises both thresholded and kept entries
    alpha = float((x @ D).abs().median())
    layers = [sdu_nn.LISTALayer.from_dictionary(D, alpha) for _ in range(L)]
    lip = float(torch.linalg.matrix_norm(D, ord=2) ** 2)
    y = torch.zeros(B, m, dtype=torch.float64, device=device)
    y_ref = up(y)
    for layer in layers:
        y = layer(y, x)
        y_ref = ista_step(up(D), up(x), y_ref, alpha, lip)
    check(y, y_ref, torch.float64, rng, f"{L} untrained layers vs {L} ISTA steps")
    assert (y == 0).any() and (y != 0).any(), "the check should exercise both thresholded and kept entries"
