"""sdu_ext.problems: the Lasso's Lipschitz constant and the offline data sets
(determinism, reference codes, cache integrity, configuration errors)."""
import math
import os
import warnings

import pytest
import torch

from sdu_ext import solvers
from sdu_ext.problems import DatasetConfig, Lasso, datasets, load
from sdu_testing import DEVICES

skimage = pytest.importorskip("skimage")

# Miniature configurations: the same code paths as the defaults in a fraction of a second.
SYN = dict(name="synthetic", n=20, m=40, n_train=30, n_val=10, n_test=10)
PAT = dict(name="patches", patch_size=8, images=("camera", "coffee"), stride=16,
           n_train=24, n_val=8, n_test=8)


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("SDU_EXT_CACHE", str(tmp_path))
    return tmp_path


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kind", ["gaussian", "positive"])
def test_lipschitz_is_top_eigenvalue(rng, device, dtype, kind):
    D = (rng.randn(30, 45) if kind == "gaussian" else rng.rand(30, 45)).to(device, dtype)
    expected = float(torch.linalg.eigvalsh(D.double().T @ D.double())[-1])
    frob = float(D.double().norm()) ** 2
    lip = Lasso(D, 0.1).lipschitz
    assert math.isclose(lip, expected, rel_tol=1e-10), rng
    assert lip < frob  # not the Frobenius norm


@pytest.mark.parametrize("cfg", [SYN, dict(SYN, snr_db=20.0), PAT, dict(PAT, dictionary="unit_norm")],
                         ids=["synthetic", "synthetic-noisy", "patches", "patches-unit"])
def test_datasets_deterministic_and_valid(cfg):
    a = load(cache=False, progress=False, **cfg)
    b = load(cache=False, progress=False, **cfg)
    c = load(cache=False, progress=False, **dict(cfg, seed=1))
    conf = a.config
    assert a.D.shape == (conf.n, conf.m) and a.D.dtype == torch.float32
    for name, size in zip(("train", "val", "test"), (conf.n_train, conf.n_val, conf.n_test)):
        sa, sb = a.split(name), b.split(name)
        assert sa.x.shape == (size, conf.n) and sa.y.shape == (size, conf.m) and len(sa) == size
        for key in ("x", "y", "gap"):
            assert torch.equal(getattr(sa, key), getattr(sb, key)), (name, key)
        assert bool((sa.gap <= conf.tol).all())
        # the stored codes are the LASSO optima of the stored signals
        p64 = Lasso(a.D.double(), conf.alpha)
        y64, x64 = sa.y.double(), sa.x.double()
        gap = p64.duality_gap(y64, x64) / p64.value(y64, x64).clamp_min(1e-300)
        assert float(gap.max()) <= 1e-4  # the float32 rounding of certified codes
    assert torch.equal(a.D, b.D) and not torch.equal(a.D, c.D)
    assert not torch.equal(a.train.x, c.train.x)
    if conf.name == "synthetic":
        torch.testing.assert_close(a.D.double().norm(dim=0), torch.ones(conf.m, dtype=torch.float64))
        assert a.train.y_true.shape == a.train.y.shape
        if conf.snr_db is None:
            torch.testing.assert_close(a.train.x, a.train.y_true @ a.D.T, rtol=1e-5, atol=1e-5)
    else:
        assert a.train.y_true is None
        assert float(a.train.x.min()) >= 0 and float(a.train.x.max()) <= 1
        assert float(a.D.min()) >= 0


def test_patches_extraction_documented():
    """The first selected patch is the documented crop of the documented image."""
    cfg = DatasetConfig(**PAT)
    data = load(cfg, cache=False, progress=False)
    p, s = cfg.patch_size, cfg.stride
    corners = []
    for k, name in enumerate(cfg.images):
        img, _ = datasets._gray_image(name)
        H, W = img.shape
        corners += [(k, i, j) for i in range(0, H - p + 1, s) for j in range(0, W - p + 1, s)]
    order = torch.randperm(len(corners), generator=torch.Generator().manual_seed(cfg.seed))
    k, i, j = corners[int(order[0])]
    img, _ = datasets._gray_image(cfg.images[k])
    torch.testing.assert_close(data.train.x[0], img[i:i + p, j:j + p].reshape(-1).float())


def test_synthetic_snr():
    cfg = dict(SYN, n=200, m=300, n_train=200, n_val=0, n_test=0, snr_db=10.0, reference="ista",
               ista_steps=0)
    data = load(cache=False, progress=False, **cfg)
    clean = data.train.y_true.double() @ data.D.double().T
    noise = data.train.x.double() - clean
    snr = 10 * torch.log10(clean.pow(2).sum() / noise.pow(2).sum())
    assert abs(float(snr) - 10.0) < 0.5


def test_splits_independent_of_other_sizes():
    a = load(cache=False, progress=False, **SYN)
    b = load(cache=False, progress=False, **dict(SYN, n_train=5))
    assert torch.equal(a.val.x, b.val.x) and torch.equal(a.test.y, b.test.y)


def test_ista_reference_option():
    data = load(cache=False, progress=False, **dict(SYN, reference="ista", ista_steps=7))
    y = torch.zeros(data.config.n_train, data.config.m, dtype=torch.float64)
    expected = solvers.ista(Lasso(data.D.double(), data.config.alpha), data.train.x.double(),
                            max_iter=7, tol=0.0).codes
    torch.testing.assert_close(data.train.y, expected.float())
    assert not torch.equal(data.train.y, y.float())


def test_cache_hit(cache_dir, monkeypatch):
    first = load(progress=False, **SYN)
    path = datasets.cache_path(first.config, str(cache_dir))
    assert os.path.exists(path)

    def fail(*a, **k):
        raise AssertionError("regenerated although a valid cache file exists")

    monkeypatch.setattr(datasets, "_generate", fail)
    second = load(progress=False, **SYN)
    assert torch.equal(first.train.y, second.train.y) and torch.equal(first.D, second.D)
    assert second.info == first.info


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage", "empty"])
def test_cache_damage_is_detected_and_regenerated(cache_dir, damage):
    first = load(progress=False, **SYN)
    path = datasets.cache_path(first.config, str(cache_dir))
    raw = open(path, "rb").read()
    if damage == "truncate":
        raw = raw[: len(raw) // 2]
    elif damage == "flip":
        pos = len(raw) - 100
        raw = raw[:pos] + bytes([raw[pos] ^ 0xFF]) + raw[pos + 1:]
    elif damage == "garbage":
        raw = b"not a cache file"
    else:
        raw = b""
    with open(path, "wb") as f:
        f.write(raw)
    with pytest.warns(RuntimeWarning, match="invalid"):
        again = load(progress=False, **SYN)
    for name in ("train", "val", "test"):
        assert torch.equal(first.split(name).x, again.split(name).x)
        assert torch.equal(first.split(name).y, again.split(name).y)
    # the regenerated file is valid again
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load(progress=False, **SYN)
    assert not [f for f in os.listdir(cache_dir) if f.startswith(".tmp-")]


def test_cache_keyed_by_config(cache_dir):
    a = load(progress=False, **SYN)
    b = load(progress=False, **dict(SYN, alpha=0.2))
    assert datasets.cache_path(a.config) != datasets.cache_path(b.config)
    assert not torch.equal(a.train.y, b.train.y)
    assert len([f for f in os.listdir(cache_dir) if f.endswith(".pt")]) == 2


@pytest.mark.parametrize("kwargs, name", [
    (dict(name="cifar"), "name"),
    (dict(alpha=-0.1), "alpha"),
    (dict(alpha=float("nan")), "alpha"),
    (dict(n=0), "n"),
    (dict(m=0), "m"),
    (dict(n_train=-1), "n_train"),
    (dict(n_val=1.5), "n_val"),
    (dict(density=0.0), "density"),
    (dict(snr_db=float("inf")), "snr_db"),
    (dict(snr_db="high"), "snr_db"),
    (dict(tol=0.0), "tol"),
    (dict(reference="lars"), "reference"),
    (dict(dtype="float16"), "dtype"),
    (dict(name="patches", n=1000), "n"),
    (dict(name="patches", dictionary="gaussian"), "dictionary"),
    (dict(name="patches", images=("lena",)), "images"),
    (dict(name="patches", stride=0), "stride"),
    (dict(name="patches", patch_size=8, images=("camera",), n_train=10 ** 6), "n_train"),
    (dict(name="patches", patch_size=600, images=("camera",), n_train=1, n_val=0, n_test=0),
     "patch_size"),
    (dict(bogus=1), "bogus"),
])
def test_bad_config(kwargs, name):
    with pytest.raises(ValueError, match=f"^{name}:"):
        load(cache=False, progress=False, **kwargs)


def test_defaults():
    syn, pat = DatasetConfig(), DatasetConfig(name="patches")
    assert (syn.n, syn.m, syn.alpha, syn.density) == (250, 500, 0.1, 0.1)
    assert (pat.n, pat.m, pat.alpha, pat.dictionary) == (1024, 1228, 0.5, "uniform")
    assert DatasetConfig(name="patches", patch_size=16).n == 256
    # switching data set through load's overrides takes the new set's defaults
    data = load(DatasetConfig(), name="patches", **{k: v for k, v in PAT.items() if k != "name"},
                cache=False, progress=False)
    assert (data.config.n, data.config.m, data.config.alpha) == (64, 76, 0.5)
