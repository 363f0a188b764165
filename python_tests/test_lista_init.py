"""The `random` LISTA initialisation (SPEC section 2): statistics, the per-forward initial
point, the state dict round trip, the layers against the float64 reference, and that
`ista` and `paper` are unchanged."""
import io

import pytest
import torch

from sdu_ext import reference as R
from sdu_ext.models import ISTA, LISTA
from sdu_ext.models.lista import RANDOM_WEIGHT_STD, RANDOM_Y0_STD

pytestmark = pytest.mark.usefixtures("one_thread")
F64 = torch.float64


def make_dictionary(rng, n, m):
    D = rng.randn(n, m)
    return D / D.norm(dim=0, keepdim=True)


def test_random_init_statistics_scale_and_initial_point(rng):
    n, m = 64, 96
    D = make_dictionary(rng, n, m)
    model = LISTA(D, 0.5, 3, init="random", generator=torch.Generator().manual_seed(rng.seed),
                  weight_std=0.03, y0_std=0.2)
    assert model.scale == 1.0 and model.y0_std == 0.2
    weights = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert abs(float(weights.mean())) < 2e-3 and abs(float(weights.std()) - 0.03) < 1.5e-3, f"[{rng!r}]"
    x = rng.randn(512, n)
    ys = model(x, return_all=True, generator=torch.Generator().manual_seed(11)).detach()
    # y_0 ~ N(0, 0.2^2 I) at scale 1, drawn from forward's generator
    y0 = 0.2 * torch.randn(512, m, generator=torch.Generator().manual_seed(11), dtype=F64)
    torch.testing.assert_close(ys[0], y0, rtol=0, atol=0)
    assert not torch.equal(ys[0], model(x, return_all=True, generator=torch.Generator().manual_seed(12))[0])
    # by hand: the layers see x itself (no x100 domain)
    y, expected = y0, [y0]
    for layer in model.layers:
        y = R.lista_layer(y, x, layer.W1.detach(), layer.W2.detach(), layer.theta.detach())
        expected.append(y)
    torch.testing.assert_close(ys, torch.stack(expected), rtol=1e-12, atol=1e-14)


def test_random_init_defaults_and_seeded_weights(rng):
    D = make_dictionary(rng, 40, 60)
    a = LISTA(D, 0.1, 4, init="random", generator=torch.Generator().manual_seed(5))
    b = LISTA(D, 0.1, 4, init="random", generator=torch.Generator().manual_seed(5))
    c = LISTA(D, 0.1, 4, init="random", generator=torch.Generator().manual_seed(6))
    assert a.y0_std == RANDOM_Y0_STD == 0.01 and RANDOM_WEIGHT_STD == 0.01
    for pa, pb, pc in zip(a.parameters(), b.parameters(), c.parameters()):
        assert torch.equal(pa, pb) and not torch.equal(pa, pc)
    w = torch.cat([p.detach().flatten() for p in a.parameters()])
    assert abs(float(w.std()) - RANDOM_WEIGHT_STD) < 1e-3, f"[{rng!r}]"
    x = rng.randn(2000, 40)
    y0 = a(x, return_all=True)[0].detach()
    assert abs(float(y0.std()) - RANDOM_Y0_STD) < 5e-4, f"[{rng!r}]"
    # y0_std = 0 starts from zeros
    z = LISTA(D, 0.1, 4, init="random", y0_std=0.0)
    assert torch.equal(z(x, return_all=True)[0], torch.zeros(2000, 60, dtype=F64))


def test_random_init_state_dict_carries_init_and_y0_std(rng):
    D = make_dictionary(rng, 12, 20)
    a = LISTA(D, 0.05, 3, init="random", generator=torch.Generator().manual_seed(3), y0_std=0.5)
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    b = LISTA(D, 0.05, 3)
    b.load_state_dict(torch.load(buf))
    assert b.init == "random" and b.scale == 1.0 and b.y0_std == 0.5
    x = rng.randn(6, 12)
    run = lambda mdl: mdl(x, return_all=True, generator=torch.Generator().manual_seed(1))  # noqa: E731
    assert torch.equal(run(a), run(b))
    assert "init='random'" in repr(a) and "y0_std=0.5" in repr(a)
    # an `ista` state dict loaded into a random model gives the ista model back (zeros start)
    c = LISTA(D, 0.05, 3)
    a.load_state_dict(c.state_dict())
    assert a.init == "ista" and a.y0_std is None
    assert torch.equal(a(x, return_all=True)[0], torch.zeros(6, 20, dtype=F64))


def test_random_init_untrained_network_does_not_descend(rng):
    """The point of `random`: the untrained layers do not move toward y*, unlike `ista`."""
    D = make_dictionary(rng, 30, 50)
    x = rng.randn(256, 30)
    rand = LISTA(D, 0.1, 4, init="random", generator=torch.Generator().manual_seed(rng.seed))
    ista = LISTA(D, 0.1, 4)
    ref = ISTA(D, 0.1, 200)(x)
    def dist(model):
        return (model(x, return_all=True, generator=torch.Generator().manual_seed(0)) - ref).norm(dim=-1).mean(-1)
    d_ista, d_rand = dist(ista), dist(rand)
    assert bool((d_ista[1:] < d_ista[:-1]).all())
    # random weights of size 0.01 keep the codes near 0: the distance does not shrink by 5%
    assert bool((d_rand[1:] > 0.95 * d_rand[0]).all()), (d_rand, rng)


def test_ista_and_paper_unchanged(rng):
    D = make_dictionary(rng, 12, 20)
    ista = LISTA(D, 0.05, 2)
    assert ista.y0_std is None and ista.scale == 1.0
    torch.testing.assert_close(ista.layers[0].W2.detach(), D.T / ista.lipschitz, rtol=1e-15, atol=0)
    paper = LISTA(D, 0.05, 2, init="paper", generator=torch.Generator().manual_seed(4))
    g = torch.Generator().manual_seed(4)
    for layer in paper.layers:
        for p in (layer.W1, layer.W2, layer.theta):
            torch.testing.assert_close(p.detach(), 0.01 * torch.randn(p.shape, generator=g, dtype=F64),
                                       rtol=0, atol=0)
    assert paper.scale == 100.0 and paper.get_extra_state() == {"init": "paper"}


@pytest.mark.parametrize("kwargs, message", [
    (dict(init="paper", weight_std=0.1), r"^weight_std: only init='random' takes it, got 0.1 with init='paper'"),
    (dict(init="ista", y0_std=0.1), r"^y0_std: only init='random' takes it, got 0.1 with init='ista'"),
    (dict(init="random", weight_std=-1.0), r"^weight_std: expected a finite number >= 0, got -1.0"),
    (dict(init="random", y0_std=float("nan")), r"^y0_std: expected a finite number >= 0, got nan"),
    (dict(init="random", y0_std=float("inf")), r"^y0_std: expected a finite number >= 0, got inf"),
    (dict(init="xavier"), r"^init: expected one of 'ista', 'paper', 'random', got 'xavier'"),
])
def test_random_init_errors(rng, kwargs, message):
    D = make_dictionary(rng, 6, 8)
    with pytest.raises(ValueError, match=message):
        LISTA(D, 0.05, 2, **kwargs)


def test_random_state_dict_without_y0_std_is_rejected(rng):
    D = make_dictionary(rng, 6, 8)
    model = LISTA(D, 0.05, 2)
    state = model.state_dict()
    state["_extra_state"] = {"init": "random"}
    with pytest.raises(ValueError, match=r"^y0_std: expected it in the state dict"):
        model.load_state_dict(state)
