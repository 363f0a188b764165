"""The Python layer on CUDA: primal-dual training, evaluation and the `sdu-ext` command
give the same results on a GPU as on the CPU (float64, tolerance for reduction order).
Every test here skips without a visible CUDA device."""
import json

import pytest
import torch

import ddp_worker as W
from sdu_ext import cli
from sdu_ext.evaluate import evaluate_model
from sdu_ext.models import LISTA
from sdu_ext.train import DescentConstraints, PrimalDualTrainer, TrainConfig

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device visible")]
F64 = torch.float64


def _trained(device, form):
    D, train, val = W.make_problem(seed=3, n_train=256, n_val=64, dtype=F64)
    model = LISTA(D, W.ALPHA, W.L, init="ista")
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # perturbed on the CPU, so both devices start from the same weights
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    # eps=0.3 is more than the perturbed ISTA layers give: the multipliers become active.
    cfg = TrainConfig(epochs=3, batch_size=64, lr=3e-3, lr_dual=1.0, eps=0.3, seed=0, device=device)
    trainer = PrimalDualTrainer(model, train, val, cfg, DescentConstraints("distance", form))
    return trainer, trainer.fit()


@pytest.mark.parametrize("form", ["mean_ratio", "ratio_of_means"])
def test_constrained_training_on_cuda_matches_cpu(form):
    (ct, ch), (gt, gh) = _trained("cpu", form), _trained("cuda", form)
    assert next(gt.model.parameters()).device.type == "cuda"
    nu_cpu, nu_gpu = ct.multipliers["descent"], gt.multipliers["descent"]
    assert nu_cpu.max() > 0, "the test needs active constraints"
    torch.testing.assert_close(nu_gpu, nu_cpu, rtol=1e-6, atol=1e-9)
    gpu_state = gt.model.state_dict()
    for k, v in ct.model.state_dict().items():
        if isinstance(v, torch.Tensor):
            torch.testing.assert_close(gpu_state[k].cpu(), v, rtol=1e-6, atol=1e-9, msg=k)
        else:  # extra state (plain values)
            assert gpu_state[k] == v, k
    for rc, rg in zip(ch, gh):
        assert rg["val_loss"] == pytest.approx(rc["val_loss"], rel=1e-6)


def test_evaluation_on_cuda_matches_cpu():
    D, _, (x, y) = W.make_problem(seed=4, n_train=16, n_val=128, dtype=F64)
    model = LISTA(D, W.ALPHA, W.L, init="ista")
    cpu = evaluate_model(model, x, y)
    gpu = evaluate_model(model.to("cuda"), x.to("cuda"), y.to("cuda"))
    assert cpu.keys() == gpu.keys()
    for key in ("nmse_db", "descending", "support_fraction"):
        assert gpu[key] == pytest.approx(cpu[key], rel=1e-9, abs=1e-9), key


@pytest.mark.filterwarnings("ignore:data. dropped:UserWarning")
def test_reproduce_tiny_on_cuda(tmp_path):
    out = tmp_path / "tiny"
    rc = cli.main(["reproduce", "lista", "--preset", "tiny", "--device", "cuda", "--out", str(out), "--quiet",
                   "--data-cache", str(tmp_path / "cache")])
    assert rc == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert (out / "report.md").is_file()
    text = json.dumps(metrics)
    assert "NaN" not in text and "Infinity" not in text


def test_glow_prox_on_cuda_matches_cpu(tmp_path):
    from sdu_ext.flows import GlowConfig
    from sdu_ext.models import GlowProx
    from sdu_ext.problems import inpainting as D

    data = D.load(D.InpaintingConfig(image_size=16, channels=1, bits=5, n_train=16, n_val=8, n_test=8),
                  cache_dir=str(tmp_path))
    y, _ = data.pairs("train")
    torch.manual_seed(0)
    cpu = GlowProx(GlowConfig(in_channels=1, image_size=16, levels=2, steps=2, hidden=8), data.mask.double(), 3)
    y = y.double()
    cpu(y)  # ActNorm's data-dependent initialisation, on the CPU for both copies
    gpu = GlowProx(cpu.config, data.mask.double(), 3)
    gpu.load_state_dict(cpu.state_dict())
    gpu.to("cuda")
    with torch.no_grad():
        want = cpu(y, return_all=True)
        got = gpu(y.to("cuda"), return_all=True)
    torch.testing.assert_close(got.cpu(), want, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(gpu.latents.cpu(), cpu.latents, rtol=1e-9, atol=1e-9)


def test_reproduce_inpaint_tiny_on_cuda(tmp_path):
    out = tmp_path / "tiny"
    rc = cli.main(["reproduce", "inpaint", "--preset", "tiny", "--device", "cuda", "--out", str(out), "--quiet",
                   "--data-cache", str(tmp_path / "cache")])
    assert rc == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["models"]) >= {"constrained", "standard"}
    assert (out / "report.md").is_file()
