"""GLOW-Prox inpainting: the data set and its cache, the unrolled network (shapes, exact
inverse inside a layer, non-negative step sizes), SSIM against scikit-image, constrained
training with the primal-dual trainer, the CLI end to end on the tiny preset, and the
stated errors."""
import json
import os
import warnings

import pytest
import torch

from sdu_ext import cli, presets
from sdu_ext.evaluate.inpainting import psnr, ssim
from sdu_ext.experiments.inpaint import build_noise, constraint_groups, mse_loss
from sdu_ext.flows import Glow, GlowConfig
from sdu_ext.models import GlowProx, UnitDirectionNoise
from sdu_ext.problems import inpainting
from sdu_ext.train import PrimalDualTrainer, TrainConfig
from sdu_testing import torch_threads

# small convolutions; the CLI's --threads changes the global setting, which the fixture restores
pytestmark = pytest.mark.usefixtures("one_thread")

TINY = dict(image_size=16, channels=1, bits=5, n_train=16, n_val=8, n_test=8)
GLOW = GlowConfig(in_channels=1, image_size=16, levels=2, steps=1, hidden=8)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("inpaint-cache"))


@pytest.fixture(scope="module")
def tiny(cache_dir):
    return inpainting.load(inpainting.InpaintingConfig(**TINY), cache_dir=cache_dir)


def _model(data, L=3, **kw):
    torch.manual_seed(0)
    return GlowProx(GLOW, data.mask, L, **kw)


# ---------------------------------------------------------------- data

def test_data_shapes_values_and_mask(tiny):
    c = tiny.config
    assert tiny.train.shape == (16, 1, 16, 16)
    assert tiny.val.shape == (8, 1, 16, 16) and tiny.test.shape == (8, 1, 16, 16)
    for x in (tiny.train, tiny.val, tiny.test):
        assert x.dtype == torch.float32 and x.min() >= 0 and x.max() <= 1
        assert torch.equal(x * 32, torch.round(x * 32))  # 5-bit levels k / 32
    assert c.hole == 6 and inpainting.InpaintingConfig().hole == 12  # 24/64 of the side
    m = tiny.mask
    assert m.shape == (1, 16, 16) and int((m == 0).sum()) == 36 and torch.all(m[:, 5:11, 5:11] == 0)
    y, x = tiny.pairs("test")
    assert torch.equal(y, x * m) and torch.all(y[:, :, 5:11, 5:11] == 0)
    assert sum(tiny.info["blocks_per_split"].values()) == tiny.info["blocks"]
    rgb = inpainting.load(image_size=16, channels=3, bits=None, n_train=4, n_val=2, n_test=2, cache=False)
    assert rgb.train.shape == (4, 3, 16, 16)
    assert torch.equal(torch.round(rgb.train * 255), rgb.train * 255)  # x = v / 255


def test_data_is_deterministic_and_splits_do_not_overlap():
    a = inpainting.load(cache=False, **TINY)
    b = inpainting.load(cache=False, **TINY)
    for s in ("train", "val", "test"):
        assert torch.equal(a.split(s), b.split(s))
    other = inpainting.load(cache=False, **dict(TINY, seed=1))
    assert not torch.equal(a.train, other.train)
    # crops of different splits come from different blocks, so no crop is shared
    flat = {s: {tuple(v.flatten().tolist()) for v in a.split(s)} for s in ("train", "val", "test")}
    assert not (flat["train"] & flat["val"]) and not (flat["train"] & flat["test"]) and not (flat["val"] & flat["test"])


def test_cache_survives_a_truncated_file(tmp_path):
    cfg = inpainting.InpaintingConfig(**TINY)
    first = inpainting.load(cfg, cache_dir=str(tmp_path))
    path = inpainting.cache_path(cfg, str(tmp_path))
    assert os.path.isfile(path)
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.truncate(size // 2)
    with pytest.warns(RuntimeWarning, match="invalid .*regenerating"):
        again = inpainting.load(cfg, cache_dir=str(tmp_path))
    assert torch.equal(first.train, again.train) and torch.equal(first.mask, again.mask)
    assert os.path.getsize(path) == size
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert torch.equal(inpainting.load(cfg, cache_dir=str(tmp_path)).test, first.test)


@pytest.mark.parametrize("kw, name", [(dict(channels=2), "channels"), (dict(bits=9), "bits"),
                                      (dict(images=("camera",)), "images"), (dict(hole=16, image_size=16), "hole"),
                                      (dict(image_size=2), "image_size"), (dict(n_train=-1), "n_train")])
def test_data_config_errors_name_the_argument(kw, name):
    with pytest.raises(ValueError, match=f"^{name}: expected"):
        inpainting.InpaintingConfig(**kw)


def test_data_too_many_crops_is_rejected():
    with pytest.raises(ValueError, match="^n_train: expected at most"):
        inpainting.load(cache=False, image_size=16, channels=1, n_train=100_000, n_val=1, n_test=1)
    with pytest.raises(ValueError, match="^n_train: no image block left"):
        inpainting.load(cache=False, image_size=16, channels=1, n_train=4, n_val=100_000, n_test=1)


# ---------------------------------------------------------------- model

def test_glow_prox_shapes_and_latents(tiny):
    model = _model(tiny)
    y, x = tiny.pairs("train")
    it = model(y[:4], return_all=True)
    assert it.shape == (4, 4, 1, 16, 16)
    assert torch.equal(it[0], y[:4]) and it.min() >= 0 and it.max() <= 1
    d_top = 1
    for s in GLOW.latent_shapes()[-1]:
        d_top *= s
    assert model.latents.shape == (4, 4, d_top)
    r = model.data_residual(it, (y[:4], x[:4]))
    assert r.shape == (4, 4, 256) and float(r[0].detach().abs().max()) == 0.0  # the initial point fits y
    assert model.latent_residual(it.detach(), None) is model.latents
    with pytest.raises(ValueError, match="^iterates: latent_residual needs"):
        model.latent_residual(it.clone(), None)
    assert torch.equal(model(y[:4]), it[-1])
    with pytest.raises(ValueError, match="^iterates: latent_residual needs"):
        model.latent_residual(it, None)  # the record now belongs to the latest forward


def test_exact_inverse_inside_the_unrolled_network(tiny):
    model = _model(tiny)
    y, x = tiny.pairs("train")
    model(y[:8])  # ActNorm data-dependent initialisation
    xs = x[:8]
    for layer in model.layers:
        zs = layer.glow.encode(xs)
        assert torch.allclose(layer.glow.decode(zs), xs, atol=1e-5, rtol=0)
    # with mu = lambda = 0 a layer is decode(encode(x)) clamped: the identity on images
    with torch.no_grad():
        for layer in model.layers:
            layer.mu_raw.fill_(-40.0)
            layer.lam_raw.fill_(-40.0)
    for l, layer in enumerate(model.layers):
        out, _, _ = layer(xs, y[:8], model.mask)
        assert torch.allclose(out, xs, atol=1e-5, rtol=0), f"layer {l + 1}"


@pytest.mark.parametrize("opt", ["SGD", "Adam"])
def test_mu_and_lambda_stay_non_negative_after_every_step(tiny, opt):
    model = _model(tiny, mu=0.5, lam=0.01)
    params = [p for layer in model.layers for p in (layer.mu_raw, layer.lam_raw)]
    optimizer = getattr(torch.optim, opt)(params, lr=1e3)
    for _ in range(6):
        loss = model.mu.sum() + model.lam.sum()  # the gradient pushes both below 0
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        assert bool((model.mu >= 0).all()) and bool((model.lam >= 0).all())
        assert bool(torch.isfinite(model.mu).all()) and bool(torch.isfinite(model.lam).all())
    assert float(model.mu.detach().max()) < 0.5 and float(model.lam.detach().max()) < 0.01  # they moved down


def test_noise_hook_before_layers_1_to_L_minus_1(tiny):
    model = _model(tiny, L=4)
    calls = []

    def spy(layer, x, y):
        calls.append(layer)
        return x + 0.01

    y, _ = tiny.pairs("val")
    it = model(y, return_all=True, noise=spy)
    assert calls == [0, 1, 2]
    assert torch.allclose(it[0], (y + 0.01).clamp(0, 1))
    hook = UnitDirectionNoise(2.0, generator=torch.Generator().manual_seed(0))
    for l in range(3):
        d = hook(l, y, y) - y
        assert torch.allclose(torch.linalg.vector_norm(d.flatten(1), dim=1), torch.full((8,), 2.0 / (l + 1)))


def test_an_overflowing_inverse_skips_the_proximal_step_without_nan(tiny):
    model = _model(tiny)
    y, x = tiny.pairs("train")
    model(y[:4])
    layer = model.layers[0]
    decode = layer.glow.decode
    calls = []

    def flaky(zs):
        out = decode(zs)
        calls.append(out.shape[0])
        if len(calls) == 1:  # the first, full-batch decode overflows for image 1
            out = out + torch.zeros_like(out).index_fill(0, torch.tensor([1]), float("inf"))
        return out

    layer.glow.decode = flaky
    xin = x[:4]
    out, _, _ = layer(xin, y[:4], model.mask)
    assert calls == [4, 3] and layer.overflows == 1 and model.overflows == 1
    step = (xin - layer.mu * model.mask * (model.mask * xin - y[:4])).clamp(0, 1)
    assert torch.equal(out[1], step[1]) and bool(torch.isfinite(out).all())
    out.sum().backward()
    assert all(bool(torch.isfinite(p.grad).all()) for p in model.parameters() if p.grad is not None)


def test_pretrained_glow_is_copied_into_every_layer(tiny):
    torch.manual_seed(1)
    glow = Glow(GLOW)
    glow(tiny.train[:8])
    model = GlowProx(GLOW, tiny.mask, 3, pretrained=glow)
    ref = glow.state_dict()
    for layer in model.layers:
        for k, v in layer.glow.state_dict().items():
            assert torch.equal(v, ref[k]), k
    assert layer.glow.initialized


def test_bad_inputs_give_clear_errors(tiny):
    model = _model(tiny)
    y, _ = tiny.pairs("val")
    with pytest.raises(ValueError, match=r"^mask: expected shape \(1, 16, 16\)"):
        GlowProx(GLOW, torch.ones(1, 32, 32), 3)
    with pytest.raises(ValueError, match=r"^mask: expected values in \[0, 1\]"):
        GlowProx(GLOW, 2 * tiny.mask, 3)
    with pytest.raises(ValueError, match="^num_layers: expected an integer >= 1, got 0"):
        GlowProx(GLOW, tiny.mask, 0)
    with pytest.raises(ValueError, match="^mu: expected a finite number >= 0"):
        GlowProx(GLOW, tiny.mask, 3, mu=-1.0)
    with pytest.raises(ValueError, match="^lam: expected a finite number >= 0"):
        GlowProx(GLOW, tiny.mask, 3, lam=float("nan"))
    with pytest.raises(ValueError, match="^pretrained: expected a Glow with config"):
        GlowProx(GLOW, tiny.mask, 3, pretrained=Glow(GlowConfig(in_channels=1, image_size=16, levels=1, steps=1,
                                                                 hidden=8)))
    with pytest.raises(ValueError, match=r"^y: expected images with values in \[0, 1\], got min"):
        model(y + 0.5)
    with pytest.raises(ValueError, match=r"^y: expected masked images \(B, 1, 16, 16\)"):
        model(torch.zeros(2, 3, 16, 16))
    with pytest.raises(ValueError, match="^y: expected dtype torch.float32"):
        model(y.double())
    with pytest.raises(ValueError, match="^noise: expected the hook to return"):
        model(y, noise=lambda l, x, yy: x[:1])
    with pytest.raises(ValueError, match="^preset: expected one of"):
        presets.get_inpaint_preset("huge")
    with pytest.raises(ValueError, match="^first_layer: expected at most num_layers"):
        p = presets.get_inpaint_preset("tiny")
        presets.InpaintPreset("x", "", p.data, p.model, p.pretrain, presets.ProxMethodConfig(first_layer=9), p.train)


# ---------------------------------------------------------------- metrics

def test_ssim_and_psnr_match_scikit_image(tiny):
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    g = torch.Generator().manual_seed(0)
    rgb = inpainting.load(image_size=32, channels=3, n_train=2, n_val=1, n_test=1, cache=False).train.double()
    for x in (rgb, tiny.test[:3].double()):
        noisy = (x + 0.1 * torch.randn(x.shape, generator=g, dtype=x.dtype)).clamp(0, 1)
        for a, b in ((noisy, x), (x * tiny.mask.double() if x.shape[1] == 1 else x, x)):
            ours = ssim(a, b)
            ref = [structural_similarity(a[i].numpy(), b[i].numpy(), gaussian_weights=True, sigma=1.5,
                                         use_sample_covariance=False, data_range=1.0, channel_axis=0)
                   for i in range(a.shape[0])]
            assert torch.allclose(ours, torch.tensor(ref, dtype=ours.dtype), atol=1e-6, rtol=0)
        ps = psnr(noisy, x)
        ref = [peak_signal_noise_ratio(x[i].numpy(), noisy[i].numpy(), data_range=1.0) for i in range(x.shape[0])]
        assert torch.allclose(ps, torch.tensor(ref, dtype=ps.dtype), atol=1e-6, rtol=0)
    assert torch.allclose(ssim(rgb, rgb), torch.ones(2, dtype=torch.float64))
    with pytest.raises(ValueError, match="^x: expected images of at least 11 x 11"):
        ssim(torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 8))


# ---------------------------------------------------------------- training

def test_trainer_runs_two_constrained_epochs_with_non_negative_multipliers(tiny, tmp_path):
    model = _model(tiny)
    method = presets.ProxMethodConfig()
    seen = []

    def check(trainer, row):
        for g, nu in trainer.multipliers.items():
            seen.append((g, nu.clone()))
        assert bool((model.mu >= 0).all()) and bool((model.lam >= 0).all())

    cfg = TrainConfig(epochs=2, batch_size=8, lr=1e-3, lr_dual=10.0, mode="constrained", checkpoint_dir=str(tmp_path))
    trainer = PrimalDualTrainer(model, tiny.pairs("train"), tiny.pairs("val"), cfg, constraint_groups(model, method),
                                loss=mse_loss, noise=build_noise(1.0, 0))
    history = trainer.fit(callback=check)
    assert len(history) == 2 and len(seen) == 6  # grad_x, grad_z and the layer-1 group, per epoch
    assert trainer.constrained_layers() == {"grad_x": [2, 3], "grad_z": [2, 3], "layer1": [1]}
    for g, nu in seen:
        assert nu.shape == ((1,) if g == "layer1" else (2,)) and bool((nu >= 0).all()), g
    assert any(float(nu.max()) > 0 for _, nu in seen)  # the large dual step makes some constraint active
    row = history[-1]
    for key in ("grad_x_nu_2", "grad_z_nu_3", "grad_x_desc_val_2", "grad_z_c_val_3", "layer1_nu_1", "val_loss"):
        assert key in row
    assert os.path.isfile(tmp_path / "last.pt") and os.path.isfile(tmp_path / "best.pt")


# ---------------------------------------------------------------- CLI

@pytest.fixture(scope="module")
def reproduced(tmp_path_factory, cache_dir):
    out = tmp_path_factory.mktemp("inpaint") / "tiny"
    with torch_threads(1):
        rc = cli.main(["reproduce", "inpaint", "--preset", "tiny", "--out", str(out), "--quiet", "--threads", "1",
                       "--data-cache", cache_dir])
    assert rc == 0
    return out


def test_reproduce_inpaint_writes_the_report_folder(reproduced):
    out = reproduced
    for name in ("report.md", "metrics.json", "config.json", ".gitignore", "plots/layers.png",
                 "plots/descending.png", "plots/descending_noise.png", "plots/sweep.png", "plots/val_loss.png",
                 "plots/grid_final.png", "plots/grid_perturbed.png", "plots/grid_constrained.png",
                 "plots/grid_untrained.png", "runs/constrained/seed0/history.csv", "runs/noisy/seed1/history.json",
                 "checkpoints/glow/glow.pt", "checkpoints/standard/seed1/best.pt"):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    L = presets.get_inpaint_preset("tiny").model.num_layers
    assert metrics["seeds"] == [0, 1]
    assert set(metrics["models"]) == {"constrained", "standard", "noisy", "untrained"}
    from sdu_ext.experiments.verdicts import INPAINT_CLAIMS
    assert [r["id"] for r in metrics["claims"]] == list(INPAINT_CLAIMS)
    for v, records in metrics["runs"].items():
        assert [r["seed"] for r in records] == [0, 1]
        for r, full in zip(records, metrics["per_seed"][v]):
            assert r["layer_psnr_db"] == full["clean"]["psnr"] and len(r["layer_psnr_db"]) == L + 1
    assert len(metrics["runs"]["constrained"][0]["final_multipliers"]["layer1"]) == 1
    c = metrics["models"]["constrained"]
    assert len(c["clean"]["psnr"]) == L + 1 and len(c["clean"]["desc_z"]) == L
    assert c["sweep"]["p"] == [0.0, 2.0, 8.0]
    for g in ("grad_x", "grad_z"):
        assert len(c["train"]["multipliers"][g]) == L - 1 and min(c["train"]["multipliers"][g]) >= 0
    assert len(c["train"]["multipliers"]["layer1"]) == 1
    assert metrics["models"]["standard"]["train"]["multipliers"] is None
    assert min(c["train"]["mu"]) >= 0 and min(c["train"]["lam"]) >= 0
    assert {r["verdict"] for r in metrics["claims"]} <= {"holds", "does not hold", "inconclusive"}
    report = (out / "report.md").read_text()
    for heading in ("## The paper's claims", "## Per layer, clean test set", "## Perturbation sweep",
                    "## Reconstructions per layer", "## Under noise between layers"):
        assert heading in report
    assert "sdu-ext reproduce inpaint --preset tiny" in report and "plots/grid_final.png" in report


def test_reproduce_inpaint_resume_reuses_finished_work(reproduced, cache_dir):
    before = json.loads((reproduced / "metrics.json").read_text())
    rc = cli.main(["reproduce", "inpaint", "--preset", "tiny", "--out", str(reproduced), "--quiet", "--resume",
                   "--threads", "1", "--data-cache", cache_dir])
    assert rc == 0
    after = json.loads((reproduced / "metrics.json").read_text())
    assert after["timing"]["resumed"] is True and after["glow"]["reused"] is True
    for k in ("constrained", "standard", "noisy"):
        assert after["models"][k]["clean"]["psnr"] == before["models"][k]["clean"]["psnr"]


def test_presets_round_trip():
    for name in presets.INPAINT_PRESETS:
        p = presets.get_inpaint_preset(name)
        assert presets.InpaintPreset.from_dict(json.loads(json.dumps(p.to_dict()))) == p
        assert p.glow_config().image_size == p.data.image_size
    paper = presets.get_inpaint_preset("paper")
    assert (paper.data.image_size, paper.data.hole, paper.model.levels, paper.model.steps, paper.model.hidden) == \
        (64, 24, 4, 18, 512)
    assert (paper.train.lr, paper.train.batch_size, paper.train.lr_dual, paper.method.eps) == (1e-5, 8, 1e-3, 0.05)


def test_inpaint_eval_and_train_reuse_the_checkpoints(reproduced, cache_dir, tmp_path, capsys):
    rc = cli.main(["inpaint", "eval", "--checkpoint", str(reproduced / "checkpoints" / "constrained" / "seed0"),
                   "--out", str(tmp_path / "ev"), "--quiet", "--data-cache", cache_dir])
    assert rc == 0
    ev = json.loads((tmp_path / "ev" / "eval.json").read_text())
    assert ev["variant"] == "constrained" and (tmp_path / "ev" / "grid.png").is_file()
    assert "perturbation sweep" in capsys.readouterr().out
    rc = cli.main(["inpaint", "train", "--preset", "tiny", "--mode", "standard", "--epochs", "1", "--quiet",
                   "--out", str(tmp_path / "run"), "--glow", str(reproduced / "checkpoints" / "glow" / "glow.pt"),
                   "--data-cache", cache_dir])
    assert rc == 0 and (tmp_path / "run" / "best.pt").is_file()
    assert not (tmp_path / "run" / "glow.pt").exists()  # the given Glow was reused


def test_inpaint_cli_errors(reproduced, cache_dir, tmp_path, capsys):
    rc = cli.main(["inpaint", "eval", "--checkpoint", str(tmp_path / "none"), "--data-cache", cache_dir])
    assert rc == 2 and "checkpoint: no file at" in capsys.readouterr().err
    rc = cli.main(["inpaint", "eval", "--checkpoint", str(reproduced / "checkpoints" / "noisy" / "seed0"),
                   "--preset", "quick",
                   "--data-cache", cache_dir])
    assert rc == 2 and "was trained for another size" in capsys.readouterr().err
    rc = cli.main(["inpaint", "train", "--preset", "tiny", "--out", str(tmp_path / "r"), "--glow",
                   str(tmp_path / "missing.pt"), "--data-cache", cache_dir])
    assert rc == 2 and "--glow: no pretrained Glow at" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        cli.main(["reproduce", "inpaint", "--preset", "huge"])
    assert e.value.code == 2 and "preset: expected one of 'quick', 'paper', 'tiny'" in capsys.readouterr().err
    lista = os.path.join(str(tmp_path), "lista.pt")
    from sdu_ext.train import atomic_save
    atomic_save({"format": "sdu_ext.train/1", "metadata": {"format": "sdu_ext.cli/1"}, "model": {}}, lista)
    rc = cli.main(["inpaint", "eval", "--checkpoint", lista, "--data-cache", cache_dir])
    assert rc == 2 and "is not a GLOW-Prox checkpoint" in capsys.readouterr().err
