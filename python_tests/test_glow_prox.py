"""GLOW-Prox pieces of issue 11: one layer against its formula with lambda > 0, the
residuals that are nonzero at the masked input (layer 1's descent constraint), and the
per-image-sum loss beside the per-pixel mean."""
import pytest
import torch

from sdu_ext.flows import GlowConfig
from sdu_ext.models import GlowProx
from sdu_ext.models.glow_prox import GRAD_X_WEIGHT, GlowProxLayer, reconstruction_loss

pytestmark = pytest.mark.usefixtures("one_thread")
F64 = torch.float64
CFG = GlowConfig(in_channels=3, image_size=8, levels=2, steps=2, hidden=8)


def central_mask(size, hole):
    m = torch.ones(1, size, size, dtype=F64)
    a = (size - hole) // 2
    m[:, a:a + hole, a:a + hole] = 0
    return m


def _randomize(module, rng, scale=0.05):
    """Move every parameter off its initial value (zero-initialised couplings make a Glow
    nearly affine), so the layer's nonlinear inverse is exercised."""
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * rng.randn(*p.shape))


def test_layer_matches_its_formula_with_lambda_positive(rng):
    torch.manual_seed(rng.seed % 2**31)
    mu, lam = 0.6, 0.7
    layer = GlowProxLayer(CFG, mu, lam).to(F64)
    mask = central_mask(8, 4)
    x_clean = rng.rand(6, 3, 8, 8, low=0.1, high=0.9)
    layer.glow.encode(x_clean)  # data-initialise ActNorm before the parameters move
    _randomize(layer.glow, rng)
    y = mask * x_clean
    x = (y + 0.2 * rng.rand(6, 3, 8, 8)).clamp(0, 1)
    mu, lam = float(layer.mu.detach()), float(layer.lam.detach())  # the float32 softplus round trip
    assert mu == pytest.approx(0.6, rel=1e-6) and lam == pytest.approx(0.7, rel=1e-6)
    out, z_top, z_raw = layer(x, y, mask)
    # by hand: gradient step on the data term, encode, shrink the top latent by 1 / (1 + lambda), decode, clamp
    step = x - mu * mask * (mask * x - y)
    zs = layer.glow.encode(step)
    torch.testing.assert_close(z_raw, zs[-1], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(z_top, zs[-1] / (1 + lam), rtol=1e-12, atol=1e-12)
    expected = layer.glow.decode(list(zs[:-1]) + [zs[-1] / (1 + lam)]).clamp(0, 1)
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)
    assert layer.overflows == 0
    # the test can tell the shrink from a stretch: z * (1 + lambda) decodes elsewhere
    wrong = layer.glow.decode(list(zs[:-1]) + [zs[-1] * (1 + lam)]).clamp(0, 1)
    assert float((wrong - out).detach().abs().max()) > 1e-3
    # and lambda matters: the unshrunk decode is the gradient step itself (exact inverse)
    torch.testing.assert_close(layer.glow.decode(list(zs)), step, rtol=1e-9, atol=1e-9)
    assert float((step.clamp(0, 1) - out).detach().abs().max()) > 1e-3


def _model(rng, L=3):
    torch.manual_seed(rng.seed % 2**31)
    mask = central_mask(8, 4)
    model = GlowProx(CFG, mask, L, mu=1.0, lam=0.3)
    x_clean = rng.rand(5, 3, 8, 8, low=0.1, high=0.9)
    y = model.measure(x_clean)
    it = model(y, return_all=True)
    return model, mask, x_clean, y, it


def test_layer_one_residuals_are_nonzero_at_the_masked_input(rng):
    model, mask, x_clean, y, it = _model(rng)
    batch = (y, x_clean)
    data = model.data_residual(it, batch)
    # the loophole: the data residual of the masked input is exactly 0
    assert torch.equal(data[0], torch.zeros_like(data[0]))
    obj = model.objective_residual(it, batch)
    lat = model.latent_residual(it, batch)
    assert obj.shape == (4, 5, 3 * 64 + lat.shape[2])
    # its norm is the whole gradient of f in (x, z): sqrt(||grad_x f||^2 + ||grad_z f||^2)
    torch.testing.assert_close(obj.norm(dim=2), (data.norm(dim=2) ** 2 + lat.norm(dim=2) ** 2).sqrt(),
                               rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(obj.norm(dim=2)[0], lat[0].norm(dim=1), rtol=1e-12, atol=0)
    assert bool((obj.norm(dim=2)[0] > 0).all())
    # by hand: grad_x f = 200 A^T (A x - y)
    torch.testing.assert_close(data[2], (GRAD_X_WEIGHT * mask * (mask * it[2] - y)).flatten(1),
                               rtol=1e-12, atol=1e-12)
    dist = model.distance_residual(it, batch)
    torch.testing.assert_close(dist[0], (-(1 - mask) * x_clean).flatten(1), rtol=0, atol=0)
    assert bool((dist[0].norm(dim=1) > 0).all())
    torch.testing.assert_close(dist[3], (it[3] - x_clean).flatten(1), rtol=0, atol=0)
    # the latents belong to this forward pass only
    with pytest.raises(ValueError, match=r"^iterates: latent_residual needs the iterates"):
        model.objective_residual(it.clone(), batch)


def test_reconstruction_loss_mean_and_sum(rng):
    out, clean = rng.rand(4, 3, 8, 8), rng.rand(4, 3, 8, 8)
    batch = (None, clean)
    by_hand = ((out - clean) ** 2).reshape(4, -1)
    torch.testing.assert_close(reconstruction_loss(out, batch), by_hand.mean(1), rtol=1e-12, atol=0)
    torch.testing.assert_close(reconstruction_loss(out, batch, "sum"), by_hand.sum(1), rtol=1e-12, atol=0)
    torch.testing.assert_close(reconstruction_loss(out, batch, "sum"), 192 * reconstruction_loss(out, batch),
                               rtol=1e-12, atol=0)
    with pytest.raises(ValueError, match=r"^reduction: expected one of 'mean', 'sum', got 'max'"):
        reconstruction_loss(out, batch, "max")
    with pytest.raises(ValueError, match=r"^output: expected images \(B, C, H, W\) of the clean images' shape"):
        reconstruction_loss(out[:, 0], batch)
