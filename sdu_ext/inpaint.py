"""GLOW-Prox inpainting (SPEC section 5): presets, Glow pretraining, primal-dual training of
the unrolled network and its evaluation protocol. ``sdu-ext inpaint`` / ``reproduce inpaint``
(:mod:`sdu_ext.cli_inpaint`) fill these in; nothing here reads globals.

Training (:func:`train_variant`) reuses :class:`~sdu_ext.train.PrimalDualTrainer` with two
:class:`~sdu_ext.train.DescentConstraints` groups, both ``ratio_of_means`` on layers 2..L:
``grad_x`` (r = ||200 A^T (A x_l - y)||, :meth:`GlowProx.data_residual`) and ``grad_z``
(r = ||z_top,l||, :meth:`GlowProx.latent_residual`). The per-sample task loss is the MSE of
the last layer's image to the clean image (:func:`mse_loss`). Layer 1 is not constrained:
its initial point is the masked image, whose data residual is 0.

Metrics (:func:`layer_metrics`): per layer MSE (whole image and inside the hole), PSNR and
SSIM (:func:`ssim`, Gaussian window, checked against scikit-image in the tests), the
descending frequencies of both residuals and of the error to the clean image. Robustness
(:func:`perturbation_sweep`): the clean image plus ``p`` times a random unit-norm direction
(clamped to [0, 1]) is masked and reconstructed; scored against the clean image.
"""
import dataclasses
import os
import time
from dataclasses import dataclass, field
from typing import Optional

import torch
from torch.nn import functional as F

from . import presets
from .checks import check_choice, check_int, check_real
from .presets import VARIANTS, PresetBase
from .problems.inpainting import InpaintingConfig
from .reference import FORMS
from .train import DescentConstraints, PrimalDualTrainer, TrainConfig, load_checkpoint
from .train.checkpoint import atomic_save
from .train.config import check_eps

INPAINT_FORMAT = "sdu_ext.inpaint/1"
GLOW_FORMAT = "sdu_ext.inpaint.glow/1"
LABELS = {**presets.LABELS, "untrained": "untrained (pretrained Glow)"}
PS = (0.0, 1.0, 2.0, 4.0, 8.0, 16.0)


# ---------------------------------------------------------------- presets

@dataclass
class ProxModelConfig:
    """GLOW-Prox: ``num_layers`` untied layers, initial ``mu`` and ``lam``; every layer's Glow
    has ``levels`` x ``steps`` flow steps with ``hidden`` coupling channels."""

    num_layers: int = 5
    mu: float = 1.0
    lam: float = 0.1
    levels: int = 2
    steps: int = 4
    hidden: int = 64

    def __post_init__(self):
        for k in ("num_layers", "levels", "steps", "hidden"):
            check_int(getattr(self, k), k)
        check_real(self.mu, "mu")
        check_real(self.lam, "lam")


@dataclass
class PretrainConfig:
    """Maximum-likelihood pretraining of one Glow on the clean training images, copied into
    every layer (``epochs=0``: no pretraining, every layer's Glow starts at random)."""

    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-3

    def __post_init__(self):
        check_int(self.epochs, "epochs", 0)
        check_int(self.batch_size, "batch_size")
        check_real(self.lr, "lr", strict=True)


@dataclass
class ProxMethodConfig:
    """Descent constraints of the constrained network (SPEC section 5) and the training noise.

    form, eps: :class:`~sdu_ext.train.DescentConstraints` of both groups (grad_x, grad_z).
    first_layer: constraints on layers first_layer..L (SPEC: 2).
    noise_sigma: the training noise, a random unit-norm direction times
        ``noise_sigma / (l + 1)`` before layers 1..L-1 (both noisy networks train with it).
    step_lr: learning rate of the step sizes mu_l and lambda_l (their softplus parameters),
        or None for the weights' ``train.lr`` (the research code: one rate for everything).
        Adam moves a parameter by about lr per step, so at lr 1e-4 the step sizes would
        barely move in a short run.
    """

    form: str = "ratio_of_means"
    eps: float = 0.05
    first_layer: int = 2
    noise_sigma: float = 1.0
    step_lr: Optional[float] = None

    def __post_init__(self):
        check_choice(self.form, "form", FORMS)
        self.eps = check_eps(self.eps)
        check_int(self.first_layer, "first_layer")
        check_real(self.noise_sigma, "noise_sigma")
        if self.step_lr is not None:
            check_real(self.step_lr, "step_lr", strict=True)


@dataclass
class ProxEvalConfig:
    """Evaluation protocol: ``ps`` the perturbation sweep levels, ``noise_sigma`` the
    between-layer noise of the "under noise" metrics, ``batch_size`` the chunk size and
    ``grid_images`` the number of test images shown in the PNG grids."""

    ps: tuple = PS
    noise_sigma: float = 1.0
    batch_size: int = 64
    grid_images: int = 6

    def __post_init__(self):
        self.ps = tuple(float(p) for p in self.ps)
        for p in self.ps:
            check_real(p, "ps")
        if not self.ps:
            raise ValueError("ps: expected at least one perturbation level, got none")
        check_real(self.noise_sigma, "noise_sigma")
        check_int(self.batch_size, "batch_size")
        check_int(self.grid_images, "grid_images", 0)


@dataclass
class InpaintPreset(PresetBase):
    """A named, complete configuration of the inpainting reproduction."""

    name: str
    description: str
    data: InpaintingConfig
    model: ProxModelConfig
    pretrain: PretrainConfig
    method: ProxMethodConfig
    train: TrainConfig
    evaluation: ProxEvalConfig = field(default_factory=ProxEvalConfig)

    def __post_init__(self):
        if self.method.first_layer > self.model.num_layers:
            raise ValueError(f"first_layer: expected at most num_layers = {self.model.num_layers}, "
                             f"got {self.method.first_layer}")
        self.glow_config()  # validates the image size against the Glow levels

    def glow_config(self):
        """The :class:`~sdu_ext.flows.GlowConfig` of every layer."""
        from .flows import GlowConfig

        m, d = self.model, self.data
        return GlowConfig(in_channels=d.channels, image_size=d.image_size, levels=m.levels, steps=m.steps,
                          hidden=m.hidden)

    def sizes(self):
        """What a checkpoint must match: image shape, hole and network sizes."""
        d, m = self.data, self.model
        return {"channels": d.channels, "image_size": d.image_size, "hole": d.hole,
                "num_layers": m.num_layers, "levels": m.levels, "steps": m.steps, "hidden": m.hidden}


def _tiny():
    return InpaintPreset(
        name="tiny", description="seconds-long smoke test (16 x 16 grayscale, L=3, a 1-level Glow); for tests",
        data=InpaintingConfig(image_size=16, channels=1, bits=5, n_train=24, n_val=8, n_test=8),
        model=ProxModelConfig(num_layers=3, levels=1, steps=1, hidden=8),
        pretrain=PretrainConfig(epochs=1, batch_size=8, lr=1e-3),
        method=ProxMethodConfig(step_lr=1e-2),
        train=TrainConfig(epochs=2, batch_size=8, lr=1e-3, lr_dual=1e-3),
        evaluation=ProxEvalConfig(ps=(0.0, 2.0, 8.0), batch_size=8, grid_images=2))


def _quick():
    return InpaintPreset(
        name="quick", description="32 x 32 RGB 5-bit crops, L=5, a small Glow pretrained briefly, 4 epochs with "
                                  "larger learning rates than the research (<= 15 minutes on 2 CPU cores)",
        data=InpaintingConfig(image_size=32, channels=3, bits=5, n_train=768, n_val=64, n_test=192),
        model=ProxModelConfig(num_layers=5, mu=1.0, lam=0.1, levels=2, steps=4, hidden=32),
        pretrain=PretrainConfig(epochs=15, batch_size=32, lr=1e-3),
        method=ProxMethodConfig(step_lr=1e-2),
        train=TrainConfig(epochs=4, batch_size=8, lr=1e-4, lr_dual=1e-2),
        evaluation=ProxEvalConfig(batch_size=64, grid_images=6))


def _paper():
    return InpaintPreset(
        name="paper", description="the research sizes: 64 x 64 RGB 5-bit, 24 x 24 hole, Glow 4 levels x 18 steps "
                                  "x 512 channels, Adam 1e-5, batch 8 (a GPU job)",
        data=InpaintingConfig(image_size=64, channels=3, bits=5, n_train=1200, n_val=100, n_test=200),
        model=ProxModelConfig(num_layers=5, mu=1.0, lam=0.1, levels=4, steps=18, hidden=512),
        pretrain=PretrainConfig(epochs=200, batch_size=16, lr=1e-4),
        method=ProxMethodConfig(),
        train=TrainConfig(epochs=100, batch_size=8, lr=1e-5, lr_dual=1e-3),
        evaluation=ProxEvalConfig(batch_size=16))


PRESETS = {"quick": _quick, "paper": _paper, "tiny": _tiny}


def get_preset(name):
    """A fresh :class:`InpaintPreset` by name; ValueError naming the choices for an unknown one."""
    check_choice(name, "preset", PRESETS)
    return PRESETS[name]()


# ---------------------------------------------------------------- image metrics

def mse_loss(output, batch):
    """The task loss per sample: mean squared error of ``output`` (B, C, H, W) to the clean
    images ``batch[1]`` (B, C, H, W) -> (B,)."""
    return (output - batch[1]).pow(2).flatten(1).mean(dim=1)


def psnr(x, reference, data_range=1.0):
    """PSNR in dB per image: ``10 log10(data_range^2 / MSE)`` for x, reference (B, ...) -> (B,)
    (float32 or wider); an MSE of 0 is floored at 1e-12 (120 dB for data_range 1)."""
    mse = (x - reference).pow(2).flatten(1).mean(dim=1).to(torch.promote_types(x.dtype, torch.float32))
    return 10.0 * torch.log10(data_range ** 2 / mse.clamp_min(1e-12))


def _gaussian_window(sigma, truncate, dtype, device):
    r = int(truncate * sigma + 0.5)
    t = torch.arange(-r, r + 1, dtype=dtype, device=device)
    w = torch.exp(-0.5 * (t / sigma) ** 2)
    return w / w.sum()


def ssim(x, reference, data_range=1.0, sigma=1.5, truncate=3.5, k1=0.01, k2=0.03):
    """Structural similarity per image (Wang et al. 2004) -> (B,), float32 or wider.

    x, reference: (B, C, H, W). Local statistics with a Gaussian window (std ``sigma``,
    radius ``int(truncate * sigma + 0.5)``: 11 x 11 for the defaults), population
    covariances, constants (k1 R)^2 and (k2 R)^2 with R = ``data_range``; the SSIM map
    is averaged over the positions where the window fits inside the image and over the
    channels. Equals ``skimage.metrics.structural_similarity(..., gaussian_weights=True,
    sigma=1.5, use_sample_covariance=False, data_range=1, channel_axis=0)``.
    """
    if x.shape != reference.shape or x.dim() != 4:
        raise ValueError(f"reference: expected the shape of x (B, C, H, W) = {tuple(x.shape)}, "
                         f"got {tuple(reference.shape)}")
    dtype = torch.promote_types(x.dtype, torch.float32)
    w = _gaussian_window(sigma, truncate, dtype, x.device)
    k = w.numel()
    if min(x.shape[2:]) < k:
        raise ValueError(f"x: expected images of at least {k} x {k} pixels for the SSIM window, "
                         f"got {tuple(x.shape[2:])}")
    C = x.shape[1]
    wr, wc = w.view(1, 1, k, 1).expand(C, 1, k, 1), w.view(1, 1, 1, k).expand(C, 1, 1, k)

    def filt(t):
        return F.conv2d(F.conv2d(t, wr, groups=C), wc, groups=C)

    a, b = x.to(dtype), reference.to(dtype)
    mu_a, mu_b = filt(a), filt(b)
    s_aa = filt(a * a) - mu_a * mu_a
    s_bb = filt(b * b) - mu_b * mu_b
    s_ab = filt(a * b) - mu_a * mu_b
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    s = ((2 * mu_a * mu_b + c1) * (2 * s_ab + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (s_aa + s_bb + c2))
    return s.flatten(1).mean(dim=1)


# ---------------------------------------------------------------- models and training

def build_model(preset, mask, glow=None, seed=0):
    """GLOW-Prox of ``preset.model`` on ``mask`` (1, S, S); every layer's Glow copies ``glow``
    when given, else starts from a random draw seeded by ``seed``."""
    from .models import GlowProx

    m = preset.model
    torch.manual_seed(seed)
    return GlowProx(preset.glow_config(), mask, m.num_layers, mu=m.mu, lam=m.lam, pretrained=glow)


def build_noise(sigma, seed):
    """The between-layer noise (:class:`~sdu_ext.models.UnitDirectionNoise`) with its own generator."""
    from .models import UnitDirectionNoise

    return UnitDirectionNoise(sigma, generator=torch.Generator().manual_seed(seed))


def constraint_groups(model, method):
    """The two descent-constraint groups of ``model`` (names ``grad_x`` and ``grad_z``)."""
    layers = list(range(method.first_layer, model.num_layers + 1))
    return [DescentConstraints(model.data_residual, method.form, eps=method.eps, layers=layers, name="grad_x"),
            DescentConstraints(model.latent_residual, method.form, eps=method.eps, layers=layers, name="grad_z")]


def _glow_key(preset, data, seed):
    from .flows import Glow

    return {"data": data.config.key(), "glow": dataclasses.asdict(preset.glow_config()), "version": Glow.VERSION,
            "pretrain": dataclasses.asdict(preset.pretrain), "seed": seed}


def load_glow(path, preset, data, seed=0, device="cpu"):
    """The Glow pretrained into ``path`` by :func:`pretrain_glow` as ``(glow, info)``; ValueError
    naming ``path`` when the file is missing, unreadable, or was pretrained with another data
    set, Glow size or version (:attr:`~sdu_ext.flows.Glow.VERSION`), pretraining configuration
    or seed."""
    from .flows import Glow

    if not os.path.isfile(path):
        raise ValueError(f"glow: no pretrained Glow at {path!r}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - unpickling raises many kinds
        raise ValueError(f"glow: {path!r} is not a readable pretrained Glow ({type(e).__name__}: {e})") from e
    if not isinstance(state, dict) or state.get("format") != GLOW_FORMAT:
        raise ValueError(f"glow: {path!r} is not a pretrained Glow written by sdu_ext.inpaint")
    if state.get("key") != _glow_key(preset, data, seed):
        raise ValueError(f"glow: {path!r} was pretrained with another data set, Glow size or version, pretraining "
                         f"configuration or seed than preset {preset.name!r} with seed {seed}")
    glow = Glow(preset.glow_config())
    glow.load_state_dict(state["model"])
    return glow.to(device), dict(state["info"], seconds=0.0, reused=True)


def pretrain_glow(preset, data, path=None, *, reuse=False, seed=0, device="cpu", progress=False):
    """One Glow trained by maximum likelihood on ``data.train`` (``preset.pretrain``), or
    ``(None, None)`` when ``preset.pretrain.epochs == 0``. With ``path`` the result is written
    there atomically; with ``reuse`` a matching file there (:func:`load_glow`) is loaded instead
    of training.

    Returns ``(glow, info)``; ``info`` holds the per-epoch history, the test bits/dim (bin
    centres, n_bins = 2^bits), the seconds of training (0 when reused) and ``reused``."""
    from .flows import Glow, bits_per_dim, train_glow

    if preset.pretrain.epochs == 0:
        return None, None
    if reuse and path is not None and os.path.isfile(path):
        try:
            return load_glow(path, preset, data, seed, device)
        except ValueError:
            pass  # another configuration: pretrain afresh and overwrite
    torch.manual_seed(seed)
    glow = Glow(preset.glow_config())
    pc = preset.pretrain
    t0 = time.perf_counter()
    history = train_glow(glow, data.train, epochs=pc.epochs, batch_size=pc.batch_size, lr=pc.lr, seed=seed,
                         n_bins=data.config.n_bins, progress=progress, device=device)
    seconds = time.perf_counter() - t0
    glow.eval()
    with torch.no_grad():
        test = data.test.to(device)
        bpd = float(torch.cat([bits_per_dim(glow, test[i:i + 256], data.config.n_bins, dequantize=False)
                               for i in range(0, test.shape[0], 256)]).mean()) if test.shape[0] else None
    info = {"history": history, "test_bits_per_dim": bpd, "seconds": seconds, "reused": False}
    if path is not None:
        atomic_save({"format": GLOW_FORMAT, "key": _glow_key(preset, data, seed),
                     "model": {k: v.cpu() for k, v in glow.state_dict().items()}, "info": info}, path)
    return glow, info


def optimizer_factory(model, train, method):
    """``factory(params) -> torch.optim`` optimizer of ``train.optimizer``: the step sizes
    (``mu_raw``, ``lam_raw``) at ``method.step_lr`` and the other parameters at ``train.lr``,
    in two parameter groups (one group when ``step_lr`` is None)."""
    cls = getattr(torch.optim, train.optimizer)
    steps = {id(p) for layer in model.layers for p in (layer.mu_raw, layer.lam_raw)}

    def make(params):
        params = list(params)
        if method.step_lr is None:
            return cls(params, lr=train.lr, **train.optimizer_kwargs)
        weights = [p for p in params if id(p) not in steps]
        sizes = [p for p in params if id(p) in steps]
        groups = [g for g in ({"params": weights}, {"params": sizes, "lr": method.step_lr}) if g["params"]]
        return cls(groups, lr=train.lr, **train.optimizer_kwargs)

    return make


def _metadata(preset, variant):
    return {"format": INPAINT_FORMAT, "preset": preset.to_dict(), "variant": variant, "sizes": preset.sizes()}


def train_variant(preset, variant, data, run_dir, glow=None, *, seed=0, device="cpu", resume=False,
                  progress=True):
    """Train one network of the comparison into ``run_dir`` (checkpoints and logs).

    ``variant``: ``"constrained"``, ``"standard"`` or ``"noisy"``; ``data`` an
    :class:`~sdu_ext.problems.inpainting.InpaintingData`; ``glow`` the pretrained Glow copied
    into every layer (None: random Glows seeded by ``seed``). Returns ``(model, summary,
    history)`` with the best weights loaded. ``resume`` continues ``run_dir/last.pt``; a
    checkpoint of another configuration raises ValueError starting with ``"resume:"``.
    """
    check_choice(variant, "variant", VARIANTS)
    mode, noisy = VARIANTS[variant]
    last = os.path.join(run_dir, "last.pt")
    if resume and os.path.isfile(last):
        meta = load_checkpoint(last).get("metadata") or {}
        old, new = meta.get("preset", {}), preset.to_dict()
        diff = [k for k in ("data", "model", "pretrain", "method") if old.get(k) != new[k]]
        if diff or meta.get("variant", variant) != variant:
            raise ValueError(f"resume: {last!r} was trained with another {' and '.join(diff) or 'variant'} "
                             f"configuration than preset {preset.name!r}")
    model = build_model(preset, data.mask, glow, seed)
    noise = build_noise(preset.method.noise_sigma, seed) if noisy else None
    cfg = dataclasses.replace(preset.train, mode=mode, seed=seed, device=device, checkpoint_dir=run_dir,
                              log_dir=run_dir, progress=progress, tensorboard=False)
    trainer = PrimalDualTrainer(model, data.pairs("train"), data.pairs("val"), cfg,
                                constraint_groups(model, preset.method), loss=mse_loss, noise=noise,
                                optimizer=optimizer_factory(model, cfg, preset.method),
                                metadata=_metadata(preset, variant))
    t0 = time.perf_counter()
    history = trainer.fit(resume=resume)
    summary = {"epochs": len(history), "best_epoch": trainer.best_epoch, "best_val_loss": trainer.best_loss,
               "seconds": time.perf_counter() - t0,
               "train_seconds_logged": float(sum(r.get("time_s", 0.0) for r in history)),
               "constrained_layers": trainer.constrained_layers()["grad_x"],
               "mu": model.mu.tolist(), "lam": model.lam.tolist(),
               "overflows": model.overflows}
    if mode == "constrained":
        summary["multipliers"] = {k: v.tolist() for k, v in trainer.multipliers.items()}
        summary["max_multipliers"] = {
            g: [max([float(r.get(f"{g}_nu_{l}", 0.0)) for r in history] or [0.0])
                for l in summary["constrained_layers"]] for g in ("grad_x", "grad_z")}
    else:
        summary["multipliers"] = summary["max_multipliers"] = None
    model.eval()
    return model, summary, history


# ---------------------------------------------------------------- evaluation

@torch.no_grad()
def run_iterates(model, y, noise=None, batch_size=64):
    """``(iterates (L+1, N, C, H, W), latents (L+1, N, D))`` of ``model`` on masked images
    ``y`` (N, C, H, W), without gradients, in chunks of ``batch_size`` (eval mode)."""
    model.eval()
    its, lat = [], []
    for i in range(0, y.shape[0], batch_size):
        its.append(model(y[i:i + batch_size], return_all=True, noise=noise))
        lat.append(model.latents)
    return torch.cat(its, dim=1), torch.cat(lat, dim=1)


def _descending(r):
    return (r[1:] < r[:-1]).to(torch.float64).mean(dim=1).tolist()


def _ratios(r):
    m = r.to(torch.float64).mean(dim=1)
    return (m[1:] / m[:-1].clamp_min(1e-12)).tolist()


@torch.no_grad()
def layer_metrics(iterates, latents, x, y, mask):
    """Per-layer metrics of reconstructions.

    iterates (L+1, N, C, H, W), latents (L+1, N, D) from :func:`run_iterates`; x the clean
    images and y the measurements (N, C, H, W); mask (1, H, W). Returns a dict of lists:
    per iterate l = 0..L: ``mse``, ``mse_hole`` (inside the hole), ``psnr`` and ``psnr_std``
    (dB, over images), ``ssim``, ``grad_x`` and ``grad_z`` (mean residual norms); per layer
    l = 1..L: ``desc_x``, ``desc_z`` (fraction of images whose residual decreased),
    ``desc_err`` (fraction whose distance to the clean image decreased) and ``ratio_x``,
    ``ratio_z`` (mean r_l / mean r_{l-1}: the ``ratio_of_means`` constraint asks <= 1 - eps);
    ``count`` the number of images.
    """
    from .models.glow_prox import GRAD_X_WEIGHT

    L1, N = iterates.shape[:2]
    err = (iterates - x).pow(2).flatten(2)
    hole = (1 - mask).expand_as(x[0]).flatten().to(torch.bool)
    rx = torch.linalg.vector_norm((GRAD_X_WEIGHT * mask * (mask * iterates - y)).flatten(2), dim=2)
    rz = torch.linalg.vector_norm(latents, dim=2)
    dist = err.sum(dim=2).sqrt()
    ps = torch.stack([psnr(iterates[l], x) for l in range(L1)])
    ss = torch.stack([ssim(iterates[l], x) for l in range(L1)])
    return {"count": int(N),
            "mse": err.mean(dim=2).mean(dim=1).tolist(),
            "mse_hole": err[:, :, hole].mean(dim=2).mean(dim=1).tolist(),
            "psnr": ps.mean(dim=1).tolist(), "psnr_std": ps.std(dim=1, unbiased=False).tolist(),
            "ssim": ss.mean(dim=1).tolist(),
            "grad_x": rx.mean(dim=1).tolist(), "grad_z": rz.mean(dim=1).tolist(),
            "desc_x": _descending(rx), "desc_z": _descending(rz), "desc_err": _descending(dist),
            "ratio_x": _ratios(rx), "ratio_z": _ratios(rz)}


def evaluate_clean(model, data, ev):
    """:func:`layer_metrics` of ``model`` on the clean test set of ``data``, plus ``overflows``
    (images whose Glow inverse overflowed in some layer, see :class:`~sdu_ext.models.GlowProx`)."""
    y, x = data.pairs("test")
    before = model.overflows
    it, lat = run_iterates(model, y, batch_size=ev.batch_size)
    return dict(layer_metrics(it, lat, x, y, data.mask), overflows=model.overflows - before)


def evaluate_under_noise(model, data, ev, seed):
    """:func:`evaluate_clean` with the between-layer noise of sigma ``ev.noise_sigma``."""
    y, x = data.pairs("test")
    before = model.overflows
    it, lat = run_iterates(model, y, build_noise(ev.noise_sigma, seed + 10_000), ev.batch_size)
    return dict(layer_metrics(it, lat, x, y, data.mask), sigma=ev.noise_sigma, overflows=model.overflows - before)


def perturb(x, p, generator):
    """``clamp(x + p u, 0, 1)`` with u (N, C, H, W) random directions of unit norm per image."""
    from .models.glow_prox import unit_directions

    return (x + p * unit_directions(x.shape, generator, x.dtype, x.device)).clamp(0.0, 1.0)


def perturbation_sweep(model, data, ev, seed, first_layer=2):
    """The robustness sweep: for each p in ``ev.ps`` the test images plus p times a random
    unit-norm direction (the same directions for every model: seeded by ``seed`` and the
    index of p), clamped, masked and reconstructed, scored against the clean images.

    Returns ``{"p", "psnr", "ssim", "mse", "psnr_input", "min_desc_x", "min_desc_z",
    "min_desc_err", "overflows"}`` (lists over p): final-layer metrics, the PSNR of the
    perturbed image itself, the lowest descending frequency over layers ``first_layer``..L
    and the Glow-inverse overflows."""
    x = data.test
    out = {k: [] for k in ("p", "psnr", "ssim", "mse", "psnr_input", "min_desc_x", "min_desc_z",
                           "min_desc_err", "overflows")}
    for i, p in enumerate(ev.ps):
        xp = perturb(x, p, torch.Generator().manual_seed(seed * 1000 + i))
        y = data.measure(xp)
        before = model.overflows
        it, lat = run_iterates(model, y, batch_size=ev.batch_size)
        out["overflows"].append(model.overflows - before)
        m = layer_metrics(it, lat, x, y, data.mask)
        k = first_layer - 1
        out["p"].append(p)
        out["psnr"].append(m["psnr"][-1])
        out["ssim"].append(m["ssim"][-1])
        out["mse"].append(m["mse"][-1])
        out["psnr_input"].append(float(psnr(xp, x).mean()))
        out["min_desc_x"].append(min(m["desc_x"][k:]))
        out["min_desc_z"].append(min(m["desc_z"][k:]))
        out["min_desc_err"].append(min(m["desc_err"][k:]))
    return out


# ---------------------------------------------------------------- pictures

def _imshow(ax, img):
    img = img.detach().cpu().clamp(0, 1)
    if img.shape[0] == 1:
        ax.imshow(img[0].numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    else:
        ax.imshow(img.permute(1, 2, 0).numpy(), interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def save_grid(path, columns, title=None):
    """A PNG grid: ``columns`` is a list of ``(label, images (N, C, H, W))``, one column each,
    one row per image. Returns the path."""
    from .evaluate.plots import _figure, _save

    n = columns[0][1].shape[0]
    ncols = len(columns)
    fig, _ = _figure(1, width=1.1 * ncols, height=1.1 * n + (0.4 if title else 0.2))
    fig.clear()
    axes = fig.subplots(n, ncols, squeeze=False)
    for j, (label, imgs) in enumerate(columns):
        for i in range(n):
            _imshow(axes[i][j], imgs[i])
        axes[0][j].set_title(label, fontsize=7)
    if title:
        fig.suptitle(title, fontsize=8)
    return _save(fig, path)


def layer_grid(path, model, data, ev, title=None):
    """clean | masked | layer 1 .. L of ``model`` on the first ``ev.grid_images`` test images."""
    n = ev.grid_images
    y, x = data.pairs("test")
    it, _ = run_iterates(model, y[:n], batch_size=ev.batch_size)
    cols = [("clean", x[:n]), ("masked", y[:n])] + [(f"layer {l}", it[l]) for l in range(1, it.shape[0])]
    return save_grid(path, cols, title)


def plot_layers(results, path):
    """PSNR and SSIM per layer (two PNG panels side by side)."""
    from .evaluate.plots import _figure, _save, _style

    fig, (ax_p, ax_s) = _figure(2)
    for i, (name, m) in enumerate(results.items()):
        layers = list(range(len(m["psnr"])))
        ax_p.plot(layers, m["psnr"], label=name, **_style(i))
        ax_s.plot(layers, m["ssim"], label=name, **_style(i))
    ax_p.set(xlabel="layer l (0 = masked input)", ylabel="PSNR (dB)", title="PSNR per layer")
    ax_s.set(xlabel="layer l (0 = masked input)", ylabel="SSIM", title="SSIM per layer")
    for ax in (ax_p, ax_s):
        ax.grid(alpha=0.3)
    ax_p.legend(fontsize=8)
    return _save(fig, path)


def plot_descending(results, path, title):
    """Grouped bars of the descending frequency of ||grad_x f|| and ||grad_z f|| per layer."""
    from .evaluate.plots import _figure, _save

    fig, axes = _figure(2, width=5.5)
    names = list(results)
    k = max(len(names), 1)
    width = 0.8 / k
    for ax, key, label in zip(axes, ("desc_x", "desc_z"), ("||grad_x f||", "||grad_z f|| = ||z_top||")):
        for i, name in enumerate(names):
            d = results[name][key]
            ax.bar([l + 1 + (i - (k - 1) / 2) * width for l in range(len(d))], d, width=width, label=name)
        ax.axhline(1.0, color="k", lw=0.6, ls=":")
        ax.set(xlabel="layer l", ylabel="fraction with r_l < r_(l-1)", ylim=(0, 1.05), title=f"{title}: {label}")
        ax.grid(alpha=0.3, axis="y")
    axes[0].legend(fontsize=7, loc="lower right")
    return _save(fig, path)


def plot_sweep(results, path):
    """Final PSNR and SSIM against the perturbation level p."""
    from .evaluate.plots import _figure, _save, _style

    fig, (ax_p, ax_s) = _figure(2)
    for i, (name, s) in enumerate(results.items()):
        ax_p.plot(s["p"], s["psnr"], label=name, **_style(i))
        ax_s.plot(s["p"], s["ssim"], label=name, **_style(i))
    first = next(iter(results.values()), None)
    if first is not None:  # p = 0 leaves the image exact (infinite PSNR): not drawn
        pts = [(p, v) for p, v in zip(first["p"], first["psnr_input"]) if p > 0]
        if pts:
            ax_p.plot(*zip(*pts), color="gray", lw=0.8, ls=":", label="perturbed image itself")
    ax_p.set(xlabel="p (norm of the perturbation)", ylabel="final PSNR vs clean (dB)", title="perturbation sweep")
    ax_s.set(xlabel="p (norm of the perturbation)", ylabel="final SSIM vs clean", title="perturbation sweep")
    for ax in (ax_p, ax_s):
        ax.grid(alpha=0.3)
    ax_p.legend(fontsize=8)
    return _save(fig, path)
