"""Named configurations of the LISTA reproduction (``sdu-ext reproduce lista --preset NAME``).

A :class:`Preset` bundles a :class:`~sdu_ext.problems.datasets.DatasetConfig` (the
sparse-coding problem and its splits), a :class:`ModelConfig` (the LISTA network), a :class:`MethodConfig` (descent
constraints and training noise), a :class:`~sdu_ext.train.TrainConfig` and an
:class:`EvalConfig`. The CLI fills the run-specific fields (seed, device, directories)
and nothing else reads globals.

Presets:
- ``tiny``: seconds; for tests (n=20, m=40, L=4).
- ``quick``: the README's main command, at most 10 minutes on 2 CPU cores.
- ``synthetic``: the standard benchmark (n=250, m=500, L=16) trained to convergence (hours on CPU).
- ``paper``: the research code's LISTA setting: image patches (n=1024, m=1228, alpha=0.5),
  ``paper`` initialisation, Adam 1e-5, batch 512, dual step once per epoch (a GPU job).
"""
import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Optional

from .checks import check_choice, check_int
from .evaluate.robustness import SHIFTS, SIGMAS
from .problems.datasets import DatasetConfig
from .train import TrainConfig
from .train.constraints import RESIDUALS

NOISE_RULES = ("log_gradient", "fixed")
# The three networks of a reproduction, LISTA and GLOW-Prox alike.
VARIANTS = {  # report name -> (trainer mode, trains with noise)
    "constrained": ("constrained", True),
    "standard": ("unconstrained", False),
    "noisy": ("noisy", True),
}
LABELS = {"constrained": "constrained", "standard": "standard", "noisy": "standard + noise"}


class PresetBase:
    """JSON round trip of a preset dataclass (:class:`Preset`,
    :class:`sdu_ext.inpaint.InpaintPreset`): fields that are dataclasses nest, the
    ``train`` field is a :class:`~sdu_ext.train.TrainConfig`."""

    def to_dict(self):
        """JSON-friendly nested dict (tuples become lists)."""
        d = dataclasses.asdict(self)
        d["train"] = self.train.to_dict()
        return d

    @classmethod
    def from_dict(cls, d):
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
            kwargs[f.name] = value
        return cls(**kwargs)


@dataclass
class ModelConfig:
    """The LISTA network: ``num_layers`` untied (or ``tied``) layers, ``init`` "ista" or "paper"."""

    num_layers: int = 16
    init: str = "ista"
    tied: bool = False

    def __post_init__(self):
        check_int(self.num_layers, "num_layers")
        if self.init not in ("ista", "paper"):
            raise ValueError(f"init: expected 'ista' or 'paper', got {self.init!r}")


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
    """A named, complete configuration of the reproduction."""

    name: str
    description: str
    data: DatasetConfig
    model: ModelConfig
    method: MethodConfig
    train: TrainConfig
    evaluation: EvalConfig = field(default_factory=EvalConfig)

    def sizes(self):
        """``{"n", "m", "num_layers"}``: what a checkpoint must match."""
        return {"n": self.data.n, "m": self.data.m, "num_layers": self.model.num_layers}


def _tiny():
    return Preset(
        name="tiny", description="seconds-long smoke test (n=20, m=40, L=4); for the test suite",
        data=DatasetConfig("synthetic", n=20, m=40, alpha=0.1, n_train=256, n_val=64, n_test=64),
        model=ModelConfig(num_layers=4, init="ista"),
        method=MethodConfig(),
        train=TrainConfig(epochs=3, batch_size=64, lr=1e-3, lr_dual=0.5),
        evaluation=EvalConfig(batch_size=256))


def _quick():
    return Preset(
        name="quick", description="the standard synthetic benchmark, trained briefly (<= 10 min on 2 CPU cores)",
        data=DatasetConfig("synthetic", n=250, m=500, alpha=0.1, n_train=5000, n_val=500, n_test=1000),
        model=ModelConfig(num_layers=10, init="ista"),
        method=MethodConfig(),
        train=TrainConfig(epochs=30, batch_size=128, lr=3e-4, lr_dual=0.5),
        evaluation=EvalConfig())


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
        name="paper", description="the research code's LISTA setting: image patches, paper init, Adam 1e-5",
        data=DatasetConfig("patches", n=1024, m=1228, alpha=0.5, n_train=50_000, n_val=5_000, n_test=5_000,
                           dictionary="uniform", reference="ista", ista_steps=3000),
        model=ModelConfig(num_layers=10, init="paper"),
        method=MethodConfig(residual="distance", form="mean_ratio", eps=0.05, noise_negative="abs"),
        train=TrainConfig(epochs=300, batch_size=512, lr=1e-5, lr_dual=1e-3, dual_every="epoch"),
        evaluation=EvalConfig(ood_clip=(0.0, 1.0)))


PRESETS = {"quick": _quick, "synthetic": _synthetic, "paper": _paper, "tiny": _tiny}


def get_preset(name):
    """A fresh :class:`Preset` by name; ValueError naming the choices for an unknown one."""
    check_choice(name, "preset", PRESETS)
    return PRESETS[name]()
