"""Named configurations of the reproductions (``sdu-ext reproduce lista|inpaint --preset NAME``).

A LISTA :class:`Preset` bundles a :class:`~sdu_ext.problems.datasets.DatasetConfig` (the
sparse-coding problem and its splits), a :class:`ModelConfig` (the LISTA network), a
:class:`MethodConfig` (descent constraints and training noise), a
:class:`~sdu_ext.train.TrainConfig` and an :class:`EvalConfig`. An :class:`InpaintPreset`
does the same for GLOW-Prox inpainting (:class:`ProxModelConfig`, :class:`PretrainConfig`,
:class:`ProxMethodConfig`, :class:`ProxEvalConfig`). The CLI fills the run-specific fields
(seed, device, directories) and nothing else reads globals.

LISTA presets (:data:`PRESETS`, :func:`get_preset`):
- ``tiny``: seconds; for tests (n=20, m=40, L=4).
- ``quick``: the README's main command, at most 10 minutes on 2 CPU cores: random
  initialisation (standard LISTA is free to wander), 4 networks x 3 seeds, a plateau
  learning-rate schedule that ends each run when it converges.
- ``synthetic``: the standard benchmark (n=250, m=500, L=16) trained to convergence (hours on CPU).
- ``paper``: the research code's LISTA setting: image patches (n=1024, m=1228, alpha=0.5),
  ``paper`` initialisation, eps 0.05, Adam 1e-5, batch 512, dual step once per epoch (lr 1e-3),
  5000 epochs (a GPU job; ``--time-budget`` stops it cleanly and ``--resume`` continues it).

Inpainting presets (:data:`INPAINT_PRESETS`, :func:`get_inpaint_preset`): ``tiny``, ``quick``
(<= 25 minutes on 2 CPU cores) and ``paper`` (the research sizes, a GPU job). They use the
per-image-sum loss (the research's) and a layer-1 descent constraint on the distance residual.
"""
import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any, Dict, Optional

from .checks import check_choice, check_int, check_real
from .flows import GlowConfig
from .models.lista import INITS
from .problems.datasets import DatasetConfig
from .problems.inpainting import InpaintingConfig
from .reference import FORMS
from .train import TrainConfig
from .train.config import check_eps
from .train.constraints import RESIDUALS

__all__ = ["VARIANTS", "LABELS", "NOISE_RULES", "FIRST_RESIDUALS", "LOSSES", "SIGMAS", "SHIFTS", "PS",
           "PresetBase",
           "check_variants", "ModelConfig",
           "MethodConfig", "EvalConfig", "Preset", "PRESETS", "get_preset", "ProxModelConfig", "PretrainConfig",
           "ProxMethodConfig", "ProxEvalConfig", "InpaintPreset", "INPAINT_PRESETS", "get_inpaint_preset"]

NOISE_RULES = ("log_gradient", "fixed")
# The networks a reproduction can compare, LISTA and GLOW-Prox alike (a preset's ``variants``
# names the ones it trains). ``constrained_nonoise`` is the ablation that separates the
# constraints from the training noise.
VARIANTS = {  # variant name -> (trainer mode, trains with noise)
    "constrained": ("constrained", True),
    "constrained_nonoise": ("constrained", False),
    "standard": ("standard", False),
    "noisy": ("noisy", True),
}
LABELS = {"constrained": "constrained + noise", "constrained_nonoise": "constrained (no noise)",
          "standard": "standard", "noisy": "standard + noise", "untrained": "untrained (pretrained Glow)"}
FIRST_RESIDUALS = ("distance", "objective")  # the GLOW-Prox layer-1 group's residual
LOSSES = ("sum", "mean")                     # the GLOW-Prox task loss per image
# The levels of the robustness protocols (SPEC sections 5 and 6): LISTA's perturbation sweep
# (sigma) and OOD shift (p), GLOW-Prox's perturbation sweep (p).
SIGMAS = (0.01, 0.1, 1.0, 10.0, 100.0, 1000.0)
SHIFTS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6)
PS = (0.0, 1.0, 2.0, 4.0, 8.0, 16.0)


class PresetBase:
    """JSON round trip of a preset dataclass (:class:`Preset`,
    :class:`InpaintPreset`): fields that are dataclasses nest, the
    ``train`` field is a :class:`~sdu_ext.train.TrainConfig`."""

    def to_dict(self) -> Dict[str, Any]:
        """JSON-friendly nested dict (tuples become lists)."""
        d = dataclasses.asdict(self)
        d["train"] = self.train.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: Dict[str, Any]):
        """Inverse of :meth:`to_dict` (lists inside the nested configurations become tuples);
        a missing ``description`` is empty, a missing configuration takes its default."""
        types = typing.get_type_hints(cls)
        kwargs = {"description": ""}
        for f in dataclasses.fields(cls):
            if f.name not in d:
                continue
            value, kind = d[f.name], types[f.name]
            if hasattr(kind, "from_dict"):
                value = kind.from_dict(value)
            elif dataclasses.is_dataclass(kind):
                value = kind(**{k: tuple(v) if isinstance(v, list) else v for k, v in value.items()})
            elif isinstance(value, list):
                value = tuple(value)
            kwargs[f.name] = value
        return cls(**kwargs)


def check_variants(variants) -> tuple:
    """``variants`` as a tuple of distinct :data:`VARIANTS` names (at least one); ValueError otherwise."""
    if isinstance(variants, str) or not isinstance(variants, (tuple, list)) or not variants:
        raise ValueError(f"variants: expected a non-empty tuple of names from {', '.join(VARIANTS)}, "
                         f"got {variants!r}")
    for v in variants:
        check_choice(v, "variants", VARIANTS)
    if len(set(variants)) != len(variants):
        raise ValueError(f"variants: expected distinct names, got {tuple(variants)!r}")
    return tuple(variants)


@dataclass
class ModelConfig:
    """The LISTA network: ``num_layers`` untied (or ``tied``) layers, ``init`` "ista", "paper"
    or "random" (:class:`~sdu_ext.models.LISTA`). ``weight_std`` and ``y0_std``: the standard
    deviations of the ``random`` initialisation (None: the model's defaults, 0.01 each);
    only ``init="random"`` takes them."""

    num_layers: int = 16
    init: str = "ista"
    tied: bool = False
    weight_std: Optional[float] = None
    y0_std: Optional[float] = None

    def __post_init__(self):
        check_int(self.num_layers, "num_layers")
        if self.init not in INITS:
            raise ValueError(f"init: expected one of {', '.join(map(repr, INITS))}, got {self.init!r}")
        for name in ("weight_std", "y0_std"):
            value = getattr(self, name)
            if value is None:
                continue
            if self.init != "random":
                raise ValueError(f"{name}: only init='random' takes it, got {value!r} with init={self.init!r}")
            check_real(value, name)


@dataclass
class MethodConfig:
    """Descent constraints of the constrained model and the noise of the noisy models.

    residual, form, eps: :class:`~sdu_ext.train.DescentConstraints`.
    noise: ``"log_gradient"`` (the research rule, :class:`~sdu_ext.models.LogGradientNoise`)
        or ``"fixed"`` (:class:`~sdu_ext.models.FixedNoise`); ``noise_sigma`` its factor or
        standard deviation; ``noise_negative`` how a negative log-norm is treated.
    Both the constrained and the standard-with-noise models train with this noise.
    """

    residual: str = "distance"
    form: str = "mean_ratio"
    eps: float = 0.05
    noise: str = "log_gradient"
    noise_sigma: float = 1.0
    noise_negative: str = "clamp"

    def __post_init__(self):
        check_choice(self.residual, "residual", RESIDUALS)
        check_choice(self.noise, "noise", NOISE_RULES)


@dataclass
class EvalConfig:
    """The evaluation protocol (SPEC section 6).

    sigmas: perturbation sweep levels. shifts: OOD shift levels p.
    ood_clip: ``(lo, hi)`` clipping of the shifted signals, or None (signals that do not
        live in [0, 1], such as the synthetic benchmark's, are not clipped).
    ood_tol: relative duality gap to which the optima of the shifted signals are solved
        (:func:`sdu_ext.solvers.solve_lasso`; 1e-4 puts their error below -60 dB NMSE).
    perturb_sigma: the sigma of the "descending frequency under noise" table.
    domain_scale: scale of the domain the sweep's sigma refers to (100: the research
        code's scaled domain, for every model; see :mod:`sdu_ext.evaluate.robustness`).
        The training noise of :class:`MethodConfig` is defined in the same domain.
    batch_size: evaluation chunk size.
    """

    sigmas: tuple = SIGMAS
    shifts: tuple = SHIFTS
    ood_clip: Optional[tuple] = None
    ood_tol: float = 1e-4
    perturb_sigma: float = 1.0
    domain_scale: float = 100.0
    batch_size: int = 1024


@dataclass
class Preset(PresetBase):
    """A named, complete configuration of the reproduction: ``variants`` the networks it
    trains (names of :data:`VARIANTS`), each for ``seeds`` seeds (the run's seed and the
    ones after it); ``train`` holds the learning-rate schedule (``TrainConfig.lr_schedule``)."""

    name: str
    description: str
    data: DatasetConfig
    model: ModelConfig
    method: MethodConfig
    train: TrainConfig
    evaluation: EvalConfig = field(default_factory=EvalConfig)
    variants: tuple = ("constrained", "constrained_nonoise", "standard", "noisy")
    seeds: int = 1

    def __post_init__(self):
        self.variants = check_variants(self.variants)
        check_int(self.seeds, "seeds")

    def sizes(self) -> Dict[str, int]:
        """``{"n", "m", "num_layers"}``: what a checkpoint must match."""
        return {"n": self.data.n, "m": self.data.m, "num_layers": self.model.num_layers}


def _tiny():
    return Preset(
        name="tiny", description="seconds-long smoke test (n=20, m=40, L=4, 2 seeds); for the test suite",
        data=DatasetConfig("synthetic", n=20, m=40, alpha=0.1, n_train=256, n_val=64, n_test=64),
        model=ModelConfig(num_layers=4, init="random"),
        method=MethodConfig(eps=0.15),
        train=TrainConfig(epochs=3, batch_size=64, lr=1e-3, lr_dual=0.5, lr_schedule="plateau", lr_patience=1,
                          lr_reductions=1),
        evaluation=EvalConfig(batch_size=256), seeds=2)


def _quick():
    return Preset(
        name="quick", description="a small synthetic problem (n=100, m=200, L=10) from a random initialisation, "
                                  "4 networks x 3 seeds trained to convergence (<= 10 min on 2 idle CPU cores "
                                  "with --jobs 2)",
        data=DatasetConfig("synthetic", n=100, m=200, alpha=0.1, n_train=5000, n_val=500, n_test=1000),
        model=ModelConfig(num_layers=10, init="random", weight_std=0.01, y0_std=0.01),
        method=MethodConfig(eps=0.15),
        # one lr for every network (2e-3 already makes standard LISTA's validation loss blow up after
        # epoch 12: measured 2026-12-01; 3e-3 diverges); at 1e-3 the constrained networks reach their
        # first plateau near epoch 70 and, with 3 reductions, did not all converge by epoch 100; the
        # plateau schedule ends each run at the plateau after its 2nd reduction (the cap is a guard)
        train=TrainConfig(epochs=150, batch_size=128, lr=1e-3, lr_dual=0.5, patience=10, lr_schedule="plateau",
                          lr_factor=0.3, lr_patience=3, lr_threshold=1e-3, lr_reductions=2),
        evaluation=EvalConfig(), seeds=3)


def _synthetic():
    return Preset(
        name="synthetic", description="the standard synthetic benchmark (n=250, m=500, L=16), trained to convergence",
        data=DatasetConfig("synthetic", n=250, m=500, alpha=0.1, n_train=50_000, n_val=2_000, n_test=2_000),
        model=ModelConfig(num_layers=16, init="ista"),
        method=MethodConfig(),
        train=TrainConfig(epochs=200, batch_size=256, lr=1e-4, lr_dual=0.5, patience=30),
        evaluation=EvalConfig())


def _paper():
    return Preset(
        name="paper", description="the research code's LISTA setting: image patches (n=1024, m=1228, alpha 0.5), "
                                  "paper init, eps 0.05, Adam 1e-5, dual step once per epoch (lr 1e-3), batch 512, "
                                  "5000 epochs (a GPU job; see --time-budget)",
        data=DatasetConfig("patches", n=1024, m=1228, alpha=0.5, n_train=50_000, n_val=5_000, n_test=5_000,
                           dictionary="uniform", reference="ista", ista_steps=3000),
        model=ModelConfig(num_layers=10, init="paper"),
        method=MethodConfig(residual="distance", form="mean_ratio", eps=0.05, noise_negative="abs"),
        train=TrainConfig(epochs=5000, batch_size=512, lr=1e-5, lr_dual=1e-3, dual_every="epoch"),
        evaluation=EvalConfig(ood_clip=(0.0, 1.0)), seeds=3)


PRESETS = {"quick": _quick, "synthetic": _synthetic, "paper": _paper, "tiny": _tiny}


def get_preset(name: str) -> Preset:
    """A fresh LISTA :class:`Preset` by name; ValueError naming the choices for an unknown one."""
    check_choice(name, "preset", PRESETS)
    return PRESETS[name]()


# ---------------------------------------------------------------- inpainting (GLOW-Prox)

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
    first_residual, first_form, first_eps: the layer-1 descent constraint group (``"dist_1"``):
        ``"distance"`` (r = ||x_l - x||, :meth:`~sdu_ext.models.GlowProx.distance_residual`),
        ``"objective"`` (r = ||[grad_x f, grad_z f]||, :meth:`~sdu_ext.models.GlowProx.objective_residual`)
        or None (no layer-1 group: layer 1 unconstrained, as before issue 11). grad_x f is 0 at
        the masked input and the z part is constant across layer 1, so only the distance
        gives layer 1 a constraint that bounds the image; with ``mean_ratio`` it asks the mean
        per-image ratio r_1 / r_0 <= 1 - eps, which (Jensen) raises the mean per-image PSNR by
        at least -20 log10(1 - eps) dB on the training images.
    loss: the task loss per image, ``"sum"`` (||x_L - x||^2, the research's) or ``"mean"``
        (per-pixel MSE = sum / (C H W)); :func:`~sdu_ext.models.glow_prox.reconstruction_loss`.
        With ``"sum"`` the multipliers and ``train.lr_dual`` are on the research's scale.
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
    first_residual: Optional[str] = "distance"
    first_form: str = "mean_ratio"
    first_eps: float = 0.05
    loss: str = "sum"
    noise_sigma: float = 1.0
    step_lr: Optional[float] = None

    def __post_init__(self):
        check_choice(self.form, "form", FORMS)
        self.eps = check_eps(self.eps)
        check_int(self.first_layer, "first_layer")
        if self.first_residual is not None:
            check_choice(self.first_residual, "first_residual", FIRST_RESIDUALS)
        check_choice(self.first_form, "first_form", FORMS)
        self.first_eps = check_eps(self.first_eps)
        check_choice(self.loss, "loss", LOSSES)
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
    """A named, complete configuration of the inpainting reproduction (``variants``,
    ``seeds`` as in :class:`Preset`)."""

    name: str
    description: str
    data: InpaintingConfig
    model: ProxModelConfig
    pretrain: PretrainConfig
    method: ProxMethodConfig
    train: TrainConfig
    evaluation: ProxEvalConfig = field(default_factory=ProxEvalConfig)
    variants: tuple = ("constrained", "standard", "noisy")
    seeds: int = 1

    def __post_init__(self):
        self.variants = check_variants(self.variants)
        check_int(self.seeds, "seeds")
        if self.method.first_layer > self.model.num_layers:
            raise ValueError(f"first_layer: expected at most num_layers = {self.model.num_layers}, "
                             f"got {self.method.first_layer}")
        self.glow_config()  # validates the image size against the Glow levels

    def glow_config(self) -> GlowConfig:
        """The :class:`~sdu_ext.flows.GlowConfig` of every layer."""
        m, d = self.model, self.data
        return GlowConfig(in_channels=d.channels, image_size=d.image_size, levels=m.levels, steps=m.steps,
                          hidden=m.hidden)

    def sizes(self) -> Dict[str, int]:
        """What a checkpoint must match: image shape, hole and network sizes."""
        d, m = self.data, self.model
        return {"channels": d.channels, "image_size": d.image_size, "hole": d.hole,
                "num_layers": m.num_layers, "levels": m.levels, "steps": m.steps, "hidden": m.hidden}


def _inpaint_tiny():
    return InpaintPreset(
        name="tiny", description="seconds-long smoke test (16 x 16 grayscale, L=3, a 1-level Glow); for tests",
        data=InpaintingConfig(image_size=16, channels=1, bits=5, n_train=24, n_val=8, n_test=8),
        model=ProxModelConfig(num_layers=3, levels=1, steps=1, hidden=8),
        pretrain=PretrainConfig(epochs=1, batch_size=8, lr=1e-3),
        method=ProxMethodConfig(step_lr=1e-2),
        train=TrainConfig(epochs=2, batch_size=8, lr=1e-3, lr_dual=0.3),
        evaluation=ProxEvalConfig(ps=(0.0, 2.0, 8.0), batch_size=8, grid_images=2), seeds=2)


def _inpaint_quick():
    return InpaintPreset(
        name="quick", description="32 x 32 RGB 5-bit crops, L=5, a small Glow pretrained briefly, 3 networks x 3 "
                                  "seeds, 4 epochs with larger learning rates than the research (<= 25 minutes on "
                                  "2 idle CPU cores)",
        data=InpaintingConfig(image_size=32, channels=3, bits=5, n_train=768, n_val=64, n_test=192),
        model=ProxModelConfig(num_layers=5, mu=1.0, lam=0.1, levels=2, steps=4, hidden=32),
        pretrain=PretrainConfig(epochs=15, batch_size=32, lr=1e-3),
        method=ProxMethodConfig(step_lr=1e-2),
        # the per-image-sum loss is C H W = 3072 times the per-pixel mean: lr_dual 30 ~ 1e-2 x 3072
        # gives the multipliers the balance the earlier mean-loss preset had at 1e-2
        train=TrainConfig(epochs=4, batch_size=8, lr=1e-4, lr_dual=30.0),
        evaluation=ProxEvalConfig(batch_size=64, grid_images=6), seeds=3)


def _inpaint_paper():
    return InpaintPreset(
        name="paper", description="the research sizes: 64 x 64 RGB 5-bit, 24 x 24 hole, Glow 4 levels x 18 steps "
                                  "x 512 channels, Adam 1e-5, batch 8 (a GPU job)",
        data=InpaintingConfig(image_size=64, channels=3, bits=5, n_train=1200, n_val=100, n_test=200),
        model=ProxModelConfig(num_layers=5, mu=1.0, lam=0.1, levels=4, steps=18, hidden=512),
        pretrain=PretrainConfig(epochs=200, batch_size=16, lr=1e-4),
        method=ProxMethodConfig(),
        train=TrainConfig(epochs=100, batch_size=8, lr=1e-5, lr_dual=1e-3),
        evaluation=ProxEvalConfig(batch_size=16), seeds=3)


INPAINT_PRESETS = {"quick": _inpaint_quick, "paper": _inpaint_paper, "tiny": _inpaint_tiny}


def get_inpaint_preset(name: str) -> InpaintPreset:
    """A fresh :class:`InpaintPreset` by name; ValueError naming the choices for an unknown one."""
    check_choice(name, "preset", INPAINT_PRESETS)
    return INPAINT_PRESETS[name]()
