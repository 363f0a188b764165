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


# ---------------------------------------------------------------- the step's CUDA options

def _cuda_trainer(noise=True, generator_device="cuda", **kw):
    D, train, val = W.make_problem(seed=5, n_train=256, n_val=64)
    model = LISTA(D, W.ALPHA, W.L, init="ista")
    hook = None
    if noise:
        from sdu_ext.models import LogGradientNoise
        hook = LogGradientNoise(model.D, sigma=0.5, generator=torch.Generator(generator_device).manual_seed(2))
    cfg = TrainConfig(**{**dict(epochs=2, batch_size=64, lr=3e-3, lr_dual=1.0, eps=0.3, seed=0, device="cuda"), **kw})
    return PrimalDualTrainer(model, train, val, cfg, DescentConstraints("distance"), noise=hook)


def _assert_close_runs(a, b, rtol):
    torch.testing.assert_close(b.multipliers["descent"], a.multipliers["descent"], rtol=rtol, atol=1e-6)
    assert a.multipliers["descent"].max() > 0, "the test needs active constraints"
    pb = dict(b.model.named_parameters())
    for name, p in a.model.named_parameters():
        torch.testing.assert_close(pb[name].detach(), p.detach(), rtol=rtol, atol=1e-6, msg=name)
    for ra, rb in zip(a.history, b.history):
        assert rb["val_loss"] == pytest.approx(ra["val_loss"], rel=rtol)


def test_resident_data_lives_on_the_gpu_and_trains_the_same():
    a, b = _cuda_trainer(resident_data=True), _cuda_trainer(resident_data=False)
    assert a.train_data.tensors[0].device.type == "cuda" and b.train_data.tensors[0].device.type == "cpu"
    a.fit()
    b.fit()
    _assert_close_runs(a, b, rtol=1e-6)


@pytest.mark.parametrize("mode", ["default", "reduce-overhead"])
def test_compiled_step_on_cuda_trains_the_eager_trajectory(mode):
    eager, compiled = _cuda_trainer(), _cuda_trainer(compile=mode)
    eager.fit()
    compiled.fit()
    _assert_close_runs(eager, compiled, rtol=1e-4)


def test_tf32_costs_little_accuracy():
    """matmul_precision='high' (TF32 GEMMs): the run stays within 1e-2 of the float32 one."""
    a, b = _cuda_trainer(matmul_precision="highest"), _cuda_trainer(matmul_precision="high")
    a.fit()
    b.fit()
    for ra, rb in zip(a.history, b.history):
        assert rb["val_loss"] == pytest.approx(ra["val_loss"], rel=1e-2)


def test_no_host_synchronisation_inside_a_step():
    """CUDA sync debug mode 'error': steps with read=False (the batch already on the GPU, noise
    drawn on the GPU) never wait for the device."""
    trainer = _cuda_trainer(check_every=64)
    batch = tuple(t[:64].cuda() for t in W.make_problem(seed=5, n_train=64, n_val=8)[1])
    trainer.step(batch, read=False)  # the first step builds the optimizer
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            trainer.step(batch, read=False)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    trainer.step(batch)  # the deferred checks: every step was finite


def test_cuda_graph_step_results_outlive_the_next_steps():
    """With CUDA graphs a replay overwrites the graph's outputs: what step(read=False) returns (and
    what the finiteness checks keep for check_every steps) must be copies."""
    trainer = _cuda_trainer(compile="reduce-overhead", check_every=8)
    batch = tuple(t[:64].cuda() for t in W.make_problem(seed=5, n_train=64, n_val=8)[1])
    for _ in range(3):  # warm-up and recording
        trainer.step(batch, read=False)
    kept = trainer.step(batch, read=False)
    copies = (float(kept["lagrangian"]), kept["constraints"]["descent"].clone())
    for _ in range(3):
        trainer.step(batch, read=False)
    assert float(kept["lagrangian"]) == copies[0]
    assert torch.equal(kept["constraints"]["descent"], copies[1])
