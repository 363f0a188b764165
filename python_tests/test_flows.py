"""Tests of sdu_ext.flows: the multi-scale Glow, its likelihood and its training."""
import math

import pytest
import torch

from sdu_ext.flows import ActNorm, Glow, GlowConfig, bits_per_dim, train_glow
from sdu_ext.flows.layers import FlowStep, InvConv1x1, ZeroConv2d, gaussian_log_prob
from sdu_testing import DEVICES

TINY = dict(levels=2, steps=2, hidden=8)


def make_glow(rng, dtype=torch.float64, device="cpu", **sizes):
    """A Glow with non-trivial parameters everywhere (not the identity it starts as)."""
    cfg = dict(in_channels=2, image_size=8, **TINY)
    cfg.update(sizes)
    torch.manual_seed(rng.seed)  # the random rotations of the 1x1 convolutions
    glow = Glow(GlowConfig(**cfg)).to(dtype=dtype)
    with torch.no_grad():
        for m in glow.modules():
            if isinstance(m, ZeroConv2d):
                # Of the size training reaches: O(1) shifts and log-scales, not explosive.
                fan_in = m.conv.weight[0].numel()
                for t, s in ((m.conv.weight, 0.5 / math.sqrt(fan_in)), (m.conv.bias, 0.1),
                             (m.log_scale, 0.05)):
                    t.copy_(s * rng.randn(*t.shape))
            elif isinstance(m, InvConv1x1):
                # Volume change; L and U stay those of the random rotation: perturbing them
                # compounds into badly conditioned products over the steps.
                m.log_s.add_(0.2 * rng.randn(*m.log_s.shape))
        for level in glow.levels:
            if hasattr(level, "top_mean"):
                level.top_mean.copy_(0.3 * rng.randn(*level.top_mean.shape))
                level.top_log_std.copy_(0.3 * rng.randn(*level.top_log_std.shape))
        # ActNorm on data (a large batch: the top level can be 1x1 spatially).
        c, s = glow.config.in_channels, glow.config.image_size
        glow(rng.rand(64, c, s, s).to(dtype))
    assert glow.initialized
    return glow.to(device)


def natural_images(n, size, gen):
    """n grayscale size x size crops of scikit-image's camera / brick / coins, in [0, 1]."""
    data = pytest.importorskip("skimage.data")
    sources = [torch.from_numpy(f()).double() / 255.0 for f in (data.camera, data.brick, data.coins)]
    # Downsample 4x so a crop holds structure rather than flat texture.
    sources = [torch.nn.functional.avg_pool2d(s[None, None], 4)[0, 0] for s in sources]
    out = []
    for i in range(n):
        img = sources[i % len(sources)]
        r = int(torch.randint(0, img.shape[0] - size + 1, (1,), generator=gen))
        c = int(torch.randint(0, img.shape[1] - size + 1, (1,), generator=gen))
        out.append(img[r:r + size, c:c + size])
    return torch.stack(out)[:, None].float()


# --- configuration and input validation ---------------------------------------------------
@pytest.mark.parametrize("field, value", [
    ("in_channels", 0), ("image_size", -4), ("levels", 0), ("steps", 1.5), ("hidden", True),
    ("image_size", 12),  # not divisible by 2**levels = 8 below
])
def test_config_rejects_bad_values(field, value):
    kwargs = dict(in_channels=1, image_size=16, levels=3, steps=1, hidden=4)
    kwargs[field] = value
    with pytest.raises(ValueError, match=rf"^{field}: .*got {value!r}"):
        GlowConfig(**kwargs)
    with pytest.raises(ValueError, match=rf"^{field}: "):
        Glow(**kwargs)


def test_config_latent_shapes():
    cfg = GlowConfig(in_channels=3, image_size=32, levels=3, steps=1, hidden=4)
    assert cfg.latent_shapes() == [(6, 16, 16), (12, 8, 8), (48, 4, 4)]
    # The latents hold exactly the image's dimensions.
    assert sum(math.prod(s) for s in cfg.latent_shapes()) == 3 * 32 * 32
    assert Glow(cfg).latent_shapes == cfg.latent_shapes()
    with pytest.raises(TypeError):
        Glow(cfg, levels=2)


@pytest.mark.parametrize("shape, dtype", [
    ((2, 16, 16), torch.float32),       # wrong rank
    ((2, 3, 16, 16), torch.float32),    # wrong channel count
    ((2, 1, 16, 8), torch.float32),     # wrong spatial size
    ((2, 1, 16, 16), torch.float64),    # dtype other than the flow's
])
def test_forward_rejects_bad_x(shape, dtype):
    glow = Glow(in_channels=1, image_size=16, levels=2, steps=1, hidden=4)
    x = torch.rand(shape, dtype=dtype)
    with pytest.raises(ValueError, match=r"^x: expected .*got"):
        glow(x)
    with pytest.raises(ValueError, match=r"^x: expected"):
        glow.encode(x)
    if len(shape) != 4 or shape[1:] != (1, 16, 16):
        with pytest.raises(ValueError, match=r"\(B, 1, 16, 16\), got \(" + ", ".join(map(str, shape))):
            glow.log_prob(x)
    assert not glow.initialized, "a rejected input must not initialise ActNorm"


def test_inverse_rejects_bad_zs():
    glow = Glow(in_channels=1, image_size=16, levels=2, steps=1, hidden=4)
    zs = [torch.randn(2, *s) for s in glow.latent_shapes]  # (2, 8, 8), (8, 4, 4)
    with pytest.raises(ValueError, match=r"^zs: expected a list of 2 tensors .*got 1 entries"):
        glow.inverse(zs[:1])
    with pytest.raises(ValueError, match=r"^zs\[1\]: expected shape \(B, 8, 4, 4\), got \(2, 8, 4, 2\)"):
        glow.inverse([zs[0], zs[1][..., :2]])
    with pytest.raises(ValueError, match=r"^zs\[1\]: expected batch size 2 .*got 3"):
        glow.decode([zs[0], torch.randn(3, 8, 4, 4)])
    with pytest.raises(ValueError, match=r"^zs\[0\]: expected dtype torch.float32"):
        glow.prior_log_prob([zs[0].double(), zs[1]])
    with pytest.raises(ValueError, match=r"^zs: expected a list"):
        glow.inverse(zs[0])


# --- exactness ----------------------------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.float64, 1e-10)],
                         ids=["float32", "float64"])
def test_inverse_of_forward_is_identity(rng, dtype, tol, device):
    glow = make_glow(rng, dtype, device, in_channels=3, image_size=16, levels=2, steps=3, hidden=16)
    x = rng.rand(5, 3, 16, 16).to(dtype=dtype, device=device)
    zs, logdet = glow(x)
    assert [tuple(z.shape) for z in zs] == [(5, *s) for s in glow.latent_shapes]
    assert logdet.shape == (5,) and logdet.dtype == dtype
    # Non-trivial: the map changes volume (the perturbed flow is not the identity).
    assert float(logdet.detach().abs().min()) > 1.0, f"logdet {logdet} [{rng!r}]"
    x_rec = glow.inverse(zs)
    err = float((x_rec - x).detach().abs().max())
    assert err <= tol, f"max |inverse(forward(x)) - x| = {err:.3g} > {tol} [{rng!r}]"
    # encode/decode are the same maps without the log-determinant.
    for z, z2 in zip(zs, glow.encode(x)):
        torch.testing.assert_close(z2, z, rtol=0, atol=0)
    torch.testing.assert_close(glow.decode(zs), x_rec, rtol=0, atol=0)
    # Latents off the data (e.g. shrunk ones, as in GLOW-Prox) invert too.
    zs2 = [z * 0.5 for z in zs]
    zs2_rec = glow.encode(glow.decode(zs2))
    for z, z2 in zip(zs2, zs2_rec):
        assert float((z - z2).detach().abs().max()) <= 100 * tol, f"{rng!r}"


@pytest.mark.parametrize("channels", [1, 2])
def test_logdet_equals_brute_force_jacobian(rng, channels):
    glow = make_glow(rng, torch.float64, in_channels=channels, image_size=4, levels=2, steps=2)
    x = rng.rand(2, channels, 4, 4)
    with torch.no_grad():
        _, logdet = glow(x)

    def flat(xi):
        return torch.cat([z.reshape(-1) for z in glow.encode(xi.reshape(1, channels, 4, 4))])

    for i in range(2):
        jac = torch.autograd.functional.jacobian(flat, x[i].reshape(-1))
        assert jac.shape == (16 * channels, 16 * channels)
        sign, brute = torch.linalg.slogdet(jac)
        assert sign != 0
        assert abs(float(brute)) > 0.5, f"trivial Jacobian [{rng!r}]"
        assert abs(float(logdet[i]) - float(brute)) < 1e-9, \
            f"logdet {float(logdet[i])!r} vs slogdet {float(brute)!r} [{rng!r}]"


def test_flow_step_starts_at_identity_coupling(rng):
    step = FlowStep(4, 8).double()
    step.actnorm.mark_initialized()
    x = rng.randn(3, 4, 5, 5)
    y, ld = step.coupling(x)
    torch.testing.assert_close(y, x, rtol=0, atol=0)
    assert float(ld.detach().abs().max()) < 1e-12


@pytest.mark.parametrize("device", DEVICES)
def test_log_prob_is_change_of_variables(rng, device):
    glow = make_glow(rng, torch.float64, device)
    x = rng.rand(4, 2, 8, 8).to(device)
    zs, logdet = glow(x)
    expected = glow.prior_log_prob(zs) + logdet  # top-down path through the inverse
    torch.testing.assert_close(glow.log_prob(x), expected, rtol=1e-12, atol=1e-9,
                               msg=lambda m: f"{rng!r}\n{m}")
    # With the priors back at their initial N(0, I) (the flow unchanged): the textbook formula.
    with torch.no_grad():
        for level in glow.levels[:-1]:
            level.prior.conv.weight.zero_()
            level.prior.conv.bias.zero_()
        top = glow.levels[-1]
        top.top_mean.zero_()
        top.top_log_std.zero_()
    std_normal = sum(-0.5 * (z ** 2 + math.log(2 * math.pi)).sum(dim=(1, 2, 3)) for z in zs)
    torch.testing.assert_close(glow.log_prob(x), std_normal + logdet, rtol=1e-12, atol=1e-9)


def test_gaussian_log_prob_matches_torch_distributions(rng):
    z, mean, log_std = rng.randn(3, 2, 4, 4), rng.randn(3, 2, 4, 4), 0.3 * rng.randn(3, 2, 4, 4)
    ref = torch.distributions.Normal(mean, log_std.exp()).log_prob(z).sum(dim=(1, 2, 3))
    torch.testing.assert_close(gaussian_log_prob(z, mean, log_std), ref)


# --- ActNorm initialisation and state --------------------------------------------------------
def test_actnorm_data_dependent_init_and_state_dict(rng):
    norm = ActNorm(3).double()
    assert not bool(norm.initialized)
    x = 4.0 + 3.0 * rng.randn(16, 3, 6, 6)
    y, ld = norm(x)
    assert bool(norm.initialized)
    torch.testing.assert_close(y.mean(dim=(0, 2, 3)), torch.zeros(3, dtype=torch.float64),
                               rtol=0, atol=1e-12)
    torch.testing.assert_close(y.std(dim=(0, 2, 3), unbiased=False),
                               torch.ones(3, dtype=torch.float64), rtol=0, atol=1e-12)
    torch.testing.assert_close(ld, 36 * norm.log_scale.sum())
    # A second batch is mapped with the same parameters, not re-standardised.
    y2, _ = norm(x + 10.0)
    assert float(y2.detach().mean()) > 1.0
    # The initialisation travels with the state_dict.
    fresh = ActNorm(3).double()
    fresh.load_state_dict(norm.state_dict())
    assert bool(fresh.initialized)
    torch.testing.assert_close(fresh(x + 10.0)[0], y2, rtol=0, atol=0)


def test_glow_state_dict_round_trip_does_not_reinitialise(rng, tmp_path):
    glow = make_glow(rng, torch.float32)
    path = tmp_path / "glow.pt"
    torch.save(glow.state_dict(), path)
    loaded = Glow(glow.config)
    assert not loaded.initialized
    loaded.load_state_dict(torch.load(path))
    assert loaded.initialized
    x = (0.5 + 0.1 * rng.randn(3, 2, 8, 8)).float()  # a batch unlike the one of the init
    for a, b in zip(glow(x)[0], loaded(x)[0]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    # mark_initialized keeps whatever parameters are there.
    fresh = Glow(glow.config).mark_initialized()
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    fresh(x)
    for k, v in fresh.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0, msg=k)


# --- likelihood and training ----------------------------------------------------------------
def test_bits_per_dim_definition_and_validation(rng):
    glow = make_glow(rng, torch.float64)
    x = rng.rand(3, 2, 8, 8)
    bpd = bits_per_dim(glow, x, n_bins=32, dequantize=False)
    centres = (torch.floor(x * 32) + 0.5) / 32
    d = 2 * 8 * 8
    expected = (d * math.log(32) - glow.log_prob(centres)) / (d * math.log(2))
    torch.testing.assert_close(bpd, expected)
    assert bits_per_dim(glow, x, reduction="mean").dim() == 0
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    torch.testing.assert_close(bits_per_dim(glow, x, generator=g1), bits_per_dim(glow, x, generator=g2))
    with pytest.raises(ValueError, match=r"^x: expected values in \[0, 1\]"):
        bits_per_dim(glow, x + 1.0)
    with pytest.raises(ValueError, match=r"^n_bins: expected an integer >= 1, got 0"):
        bits_per_dim(glow, x, n_bins=0)
    with pytest.raises(ValueError, match=r"^reduction: "):
        bits_per_dim(glow, x, reduction="sum")


def test_sample_shapes(rng):
    glow = make_glow(rng, torch.float32)
    gen = torch.Generator().manual_seed(rng.seed)
    x = glow.sample(3, temperature=0.7, generator=gen)
    assert x.shape == (3, 2, 8, 8) and x.dtype == torch.float32 and torch.isfinite(x).all()
    # Temperature 0 gives the modes of the priors, deterministically.
    torch.testing.assert_close(glow.sample(2, temperature=0.0), glow.sample(2, temperature=0.0))


def test_training_lowers_bits_per_dim(rng):
    gen = torch.Generator().manual_seed(rng.seed)
    images = natural_images(96, 8, gen)
    torch.manual_seed(rng.seed)
    glow = Glow(in_channels=1, image_size=8, levels=2, steps=2, hidden=16)
    noise = torch.Generator().manual_seed(0)
    with torch.no_grad():
        before = float(bits_per_dim(glow, images, generator=noise, reduction="mean"))
    history = train_glow(glow, images, epochs=4, batch_size=16, lr=2e-3, seed=rng.seed,
                         progress=False)
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]
    assert all(math.isfinite(h["bits_per_dim"]) and h["seconds"] >= 0 for h in history)
    with torch.no_grad():
        after = float(bits_per_dim(glow, images, generator=noise.manual_seed(0), reduction="mean"))
    assert after < before - 0.3, f"bits/dim {before:.3f} -> {after:.3f} [{rng!r}]"
    assert history[-1]["bits_per_dim"] < history[0]["bits_per_dim"], f"{history} [{rng!r}]"
    # The trained flow still inverts exactly off the data: a masked and a very noisy image
    # (the inputs GLOW-Prox feeds it).
    masked = images[:16].clone()
    masked[..., 2:6, 2:6] = 0.0
    noisy = (images[:16] + rng.randn(16, 1, 8, 8).float()).clamp(0, 1)
    with torch.no_grad():
        for name, x in (("masked", masked), ("noisy", noisy)):
            err = float((glow.decode(glow.encode(x)) - x).abs().max())
            assert err <= 1e-5, f"{name}: max |inverse(forward(x)) - x| = {err:.3g} [{rng!r}]"


def test_train_glow_rejects_bad_arguments():
    glow = Glow(in_channels=1, image_size=8, levels=2, steps=1, hidden=4)
    images = torch.rand(4, 1, 8, 8)
    kw = dict(epochs=1, batch_size=2, lr=1e-3, seed=0, progress=False)
    for name, value in (("epochs", -1), ("batch_size", 0), ("lr", 0.0), ("seed", None)):
        with pytest.raises(ValueError, match=rf"^{name}: .*got {value!r}"):
            train_glow(glow, images, **{**kw, name: value})
    with pytest.raises(ValueError, match=r"^images: expected shape \(B, 1, 8, 8\), got \(1, 3, 8, 8\)"):
        train_glow(glow, torch.rand(4, 3, 8, 8), **kw)
    with pytest.raises(ValueError, match=r"^images: expected values in \[0, 1\]"):
        train_glow(glow, images * 2, **kw)
    assert not glow.initialized
