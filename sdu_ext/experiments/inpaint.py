"""The GLOW-Prox inpainting experiment (SPEC section 5): constrained vs standard vs
standard-with-noise GLOW-Prox, and the untrained network.

Its shape, shared with :mod:`sdu_ext.experiments.lista`:

- config: an :class:`~sdu_ext.presets.InpaintPreset` (:func:`~sdu_ext.presets.get_inpaint_preset`);
- data: :func:`prepare_data` (an :class:`~sdu_ext.problems.inpainting.InpaintingData`), and one
  Glow pretrained by maximum likelihood on the clean training images (:func:`pretrain_glow`);
- variants: :class:`InpaintExperiment` copies that Glow into every layer of each network and
  builds its noise (:class:`~sdu_ext.models.UnitDirectionNoise`) and its two constraint groups
  (:func:`constraint_groups`);
- train: :func:`~sdu_ext.experiments.common.train_variant`, the same for every experiment;
- evaluate: :func:`evaluate_model` (:mod:`sdu_ext.evaluate.inpainting`: clean, under noise, sweep);
- claims: :func:`~sdu_ext.experiments.claims.assess_inpaint_claims`;
- report: :func:`~sdu_ext.experiments.report.write_inpaint_report` and image grids.

Entry points (``sdu-ext inpaint train|eval`` and ``sdu-ext reproduce inpaint``): :func:`train`,
:func:`evaluate`, :func:`reproduce`.

Training reuses :class:`~sdu_ext.train.PrimalDualTrainer` with two
:class:`~sdu_ext.train.DescentConstraints` groups, both ``ratio_of_means`` on layers 2..L:
``grad_x`` (r = ||200 A^T (A x_l - y)||, :meth:`GlowProx.data_residual`) and ``grad_z``
(r = ||z_top,l||, :meth:`GlowProx.latent_residual`), and a layer-1 group ``layer1``
(``method.first_residual``; the presets use the distance r = ||x_l - x||,
:meth:`GlowProx.distance_residual`, ``mean_ratio``): the masked input's data residual is 0
and its top latent shrinks by exactly 1 / (1 + lambda_1) in layer 1, so neither gradient
residual can constrain layer 1, while the distance bounds its effect on the PSNR. Images
whose hole is black in the clean image (the masked input is already exact, r_0 = 0) are
dropped from every split with a warning (:func:`prepare_data`), as LISTA drops y* = 0. The
per-sample task loss is ``method.loss`` (:func:`~sdu_ext.models.glow_prox.reconstruction_loss`:
the per-image sum ||x_L - x||^2 of the research, or the per-pixel mean).

``reproduce`` writes a report folder: ``report.md``, ``metrics.json``, ``config.json``,
``plots/*.png`` (metrics and image grids), ``runs/<model>/history.*`` and, ignored by git
through a generated ``.gitignore``, ``checkpoints/`` (``glow/glow.pt`` and
``<model>/{best,last}.pt``). ``resume`` continues killed runs and reuses finished ones and
the pretrained Glow.

Seeds: the data set is fixed by the preset; the run's seed seeds the Glow, the training
(shuffling, noise) and every evaluation draw.
"""
import dataclasses
import functools
import os
import time
import warnings
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import torch
from torch import nn
from tqdm.auto import tqdm

from ..evaluate import inpainting as metrics
from ..presets import InpaintPreset, get_inpaint_preset
from ..train import DescentConstraints
from ..train.checkpoint import atomic_save, atomic_write_json
from ..train.optim import build_optimizer
from . import claims, report
from .common import (Budget, CLIError, Experiment, RunOptions, check_options, check_resume, load_weights,
                     read_checkpoint, seeds_of, start_reproduction, train_variant, train_variants)
from .report import fmt, json_safe, label, table

__all__ = ["FORMAT", "GLOW_FORMAT", "prepare_data", "mse_loss", "build_model", "build_noise", "constraint_groups",
           "load_glow", "pretrain_glow", "optimizer_factory", "InpaintExperiment", "load_model", "evaluate_model",
           "run_record", "train", "evaluate", "reproduce", "FIRST_GROUP"]

FORMAT = "sdu_ext.inpaint/1"             # the checkpoint metadata format of GLOW-Prox runs
GLOW_FORMAT = "sdu_ext.inpaint.glow/1"   # the file of a pretrained Glow
RUN_FILES = ("last.pt", "best.pt", "history.csv", "glow.pt")                # a previous `inpaint train` run


# ---------------------------------------------------------------- data

def _drop_exact_inputs(data):
    """``data`` without the images whose masked version equals the clean image (a black hole:
    r_0 = ||x_0 - x|| = 0), with a warning and ``info["dropped_exact_input"]``."""
    kept, dropped = {}, {}
    for name in ("train", "val", "test"):
        x = data.split(name)
        keep = (data.measure(x) - x).flatten(1).abs().sum(dim=1) > 0
        kept[name] = x[keep]
        if int((~keep).sum()):
            dropped[name] = int((~keep).sum())
    if not dropped:
        return data
    warnings.warn(f"data: dropped images whose hole is black in the clean image (the masked input is already "
                  f"exact, so the layer-1 distance ratio divides by 0): {dropped}")
    return dataclasses.replace(data, **kept, info=dict(data.info, dropped_exact_input=dropped))


def prepare_data(preset: InpaintPreset, cache_dir: Optional[str] = None, device: str = "cpu"):
    """The :class:`~sdu_ext.problems.inpainting.InpaintingData` of ``preset.data`` (through
    the on-disk cache, ``cache_dir`` default ``$SDU_EXT_CACHE`` or ``~/.cache/sdu_ext``) on
    ``device``, without the images whose masked input is already exact (a warning names how
    many per split; they would divide the layer-1 distance ratio by 0)."""
    from ..problems import inpainting

    data = _drop_exact_inputs(inpainting.load(preset.data, cache_dir=cache_dir))
    if device != "cpu":
        data = dataclasses.replace(data, train=data.train.to(device), val=data.val.to(device),
                                   test=data.test.to(device), mask=data.mask.to(device))
    return data


# ---------------------------------------------------------------- variants

def mse_loss(output: torch.Tensor, batch) -> torch.Tensor:
    """The task loss per sample: mean squared error of ``output`` (B, C, H, W) to the clean
    images ``batch[1]`` (B, C, H, W) -> (B,)."""
    return (output - batch[1]).pow(2).flatten(1).mean(dim=1)


def build_model(preset: InpaintPreset, mask: torch.Tensor, glow: Optional[nn.Module] = None, seed: int = 0
                ) -> nn.Module:
    """GLOW-Prox of ``preset.model`` on ``mask`` (1, S, S); every layer's Glow copies ``glow``
    when given, else starts from a random draw seeded by ``seed``."""
    from ..models import GlowProx

    m = preset.model
    torch.manual_seed(seed)
    return GlowProx(preset.glow_config(), mask, m.num_layers, mu=m.mu, lam=m.lam, pretrained=glow)


def build_noise(sigma: float, seed: int, device: str = "cpu") -> nn.Module:
    """The between-layer noise (:class:`~sdu_ext.models.UnitDirectionNoise`) with its own generator
    on ``device``, seeded by ``seed``."""
    from ..models import UnitDirectionNoise

    return UnitDirectionNoise(sigma, generator=torch.Generator(device).manual_seed(seed))


FIRST_GROUP = "layer1"  # the name of the layer-1 constraint group


def constraint_groups(model: nn.Module, method) -> List[DescentConstraints]:
    """The descent-constraint groups of ``model``: ``grad_x`` and ``grad_z`` on layers
    ``method.first_layer``..L, and with ``method.first_residual`` the layer-1 group
    ``layer1`` (its residual, ``method.first_form``, ``method.first_eps``)."""
    layers = list(range(method.first_layer, model.num_layers + 1))
    groups = [DescentConstraints(model.data_residual, method.form, eps=method.eps, layers=layers, name="grad_x"),
              DescentConstraints(model.latent_residual, method.form, eps=method.eps, layers=layers, name="grad_z")]
    if method.first_residual is not None:
        residual = model.distance_residual if method.first_residual == "distance" else model.objective_residual
        groups.append(DescentConstraints(residual, method.first_form, eps=method.first_eps, layers=[1],
                                         name=FIRST_GROUP))
    return groups


def _glow_key(preset, data, seed):
    from ..flows import Glow

    return {"data": data.config.key(), "glow": dataclasses.asdict(preset.glow_config()), "version": Glow.VERSION,
            "pretrain": dataclasses.asdict(preset.pretrain), "seed": seed}


def load_glow(path: str, preset: InpaintPreset, data, seed: int = 0, device: str = "cpu") -> Tuple[nn.Module, dict]:
    """The Glow pretrained into ``path`` by :func:`pretrain_glow` as ``(glow, info)``; ValueError
    naming ``path`` when the file is missing, unreadable, or was pretrained with another data
    set, Glow size or version (:attr:`~sdu_ext.flows.Glow.VERSION`), pretraining configuration
    or seed."""
    from ..flows import Glow

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


def pretrain_glow(preset: InpaintPreset, data, path: Optional[str] = None, *, reuse: bool = False, seed: int = 0,
                  device: str = "cpu", progress: bool = False) -> Tuple[Optional[nn.Module], Optional[dict]]:
    """One Glow trained by maximum likelihood on ``data.train`` (``preset.pretrain``), or
    ``(None, None)`` when ``preset.pretrain.epochs == 0``. With ``path`` the result is written
    there atomically; with ``reuse`` a matching file there (:func:`load_glow`) is loaded instead
    of training.

    Returns ``(glow, info)``; ``info`` holds the per-epoch history, the test bits/dim (bin
    centres, n_bins = 2^bits), the seconds of training (0 when reused) and ``reused``."""
    from ..flows import Glow, bits_per_dim, train_glow

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


def optimizer_factory(model: nn.Module, train, method) -> Callable:
    """``factory(params) -> torch.optim`` optimizer of ``train.optimizer`` (fused Adam/AdamW where
    supported, as :func:`sdu_ext.train.optim.build_optimizer`): the step sizes (``mu_raw``,
    ``lam_raw``) at ``method.step_lr`` and the other parameters at ``train.lr``, in two parameter
    groups (one group when ``step_lr`` is None)."""
    steps = {id(p) for layer in model.layers for p in (layer.mu_raw, layer.lam_raw)}

    def make(params):
        params = list(params)
        if method.step_lr is None:
            return build_optimizer(train.optimizer, params, train.lr, train.optimizer_kwargs)
        weights = [p for p in params if id(p) not in steps]
        sizes = [p for p in params if id(p) in steps]
        groups = [g for g in ({"params": weights}, {"params": sizes, "lr": method.step_lr}) if g["params"]]
        return build_optimizer(train.optimizer, groups, train.lr, train.optimizer_kwargs)

    return make



class InpaintExperiment(Experiment):
    """The GLOW-Prox networks of ``preset`` on ``data``, every layer's Glow copied from ``glow``
    (None: random Glows seeded by the run's seed)."""

    format = FORMAT
    resume_sections = ("data", "model", "pretrain", "method")

    def __init__(self, preset: InpaintPreset, data, glow: Optional[nn.Module] = None):
        super().__init__(preset)
        self.data, self.glow = data, glow

    def build_model(self, seed):
        return build_model(self.preset, self.data.mask, self.glow, seed)

    def build_noise(self, model, seed, device="cpu"):
        return build_noise(self.preset.method.noise_sigma, seed, device)

    def constraints(self, model):
        return constraint_groups(model, self.preset.method)

    def splits(self):
        return self.data.pairs("train"), self.data.pairs("val")

    def trainer_options(self, model, config):
        from ..models.glow_prox import reconstruction_loss

        return {"loss": functools.partial(reconstruction_loss, reduction=self.preset.method.loss)}

    def optimizer_factory(self, model, config):
        return optimizer_factory(model, config, self.preset.method)

    def summary(self, model, trainer, history, mode):
        layers = trainer.constrained_layers()
        out = {"constrained_layers": layers["grad_x"], "group_layers": layers, "mu": model.mu.tolist(),
               "lam": model.lam.tolist(), "overflows": model.overflows}
        if mode == "constrained":
            out["multipliers"] = {k: v.tolist() for k, v in trainer.multipliers.items()}
            out["max_multipliers"] = {g: [max([float(r.get(f"{g}_nu_{l}", 0.0)) for r in history] or [0.0])
                                          for l in ls] for g, ls in layers.items()}
        else:
            out["multipliers"] = out["max_multipliers"] = None
        return out


def _sizes_text(s):
    return ", ".join(f"{k}={v}" for k, v in s.items())


def load_model(path: str, preset: Optional[InpaintPreset] = None, device: str = "cpu"
               ) -> Tuple[nn.Module, InpaintPreset, str]:
    """A GLOW-Prox checkpoint written by ``sdu-ext inpaint`` (``best.pt``/``last.pt`` or a run
    directory) as ``(model, preset, variant)``. ``preset`` must match the sizes the
    checkpoint was trained for; without it the preset stored in the checkpoint is used."""
    from ..problems.inpainting import central_mask

    path, state = read_checkpoint(path, "inpaint")
    meta = state.get("metadata") or {}
    if meta.get("format") != FORMAT:
        raise CLIError(f"checkpoint: {path!r} is not a GLOW-Prox checkpoint written by `sdu-ext inpaint` "
                       f"(metadata format {meta.get('format')!r}, expected {FORMAT!r})")
    stored = InpaintPreset.from_dict(meta["preset"])
    if preset is None:
        preset = stored
    if preset.sizes() != stored.sizes():
        raise CLIError(f"checkpoint: {path!r} was trained for another size ({_sizes_text(stored.sizes())}); "
                       f"preset {preset.name!r} has {_sizes_text(preset.sizes())}")
    mask = central_mask(preset.data.image_size, preset.data.hole)
    model = load_weights(build_model(preset, mask), state["model"], path, preset, device)
    return model, preset, meta.get("variant", "unknown")


def _glow(preset, data, path, glow_file, options, device):
    """The pretrained Glow: ``glow_file`` if given (must match the preset and seed), else
    pretrained into ``path`` (reused from there with ``options.resume``)."""
    if glow_file is not None:
        if preset.pretrain.epochs == 0:
            raise CLIError(f"--glow: preset {preset.name!r} does not pretrain a Glow (pretrain.epochs = 0)")
        try:
            return load_glow(glow_file, preset, data, options.seed, device)
        except ValueError as e:
            raise CLIError(f"--glow: {str(e).removeprefix('glow: ')}") from e
    return pretrain_glow(preset, data, path, reuse=options.resume, seed=options.seed, device=device,
                         progress=options.progress)


# ---------------------------------------------------------------- evaluate

def evaluate_model(model: nn.Module, data, ev, seed: int, first_layer: int) -> Dict[str, Any]:
    """Clean per-layer metrics, metrics under between-layer noise and the perturbation sweep."""
    return {"clean": metrics.evaluate_clean(model, data, ev.batch_size),
            "under_noise": metrics.evaluate_under_noise(model, data, ev.noise_sigma, seed, ev.batch_size),
            "sweep": metrics.perturbation_sweep(model, data, ev.ps, seed, first_layer, ev.batch_size)}


# ---------------------------------------------------------------- entry points

def _preset(preset: Union[str, InpaintPreset, None]) -> Optional[InpaintPreset]:
    return get_inpaint_preset(preset) if isinstance(preset, str) else preset


def train(preset: Union[str, InpaintPreset], variant: str, options: RunOptions, glow: Optional[str] = None) -> int:
    """``sdu-ext inpaint train``: one GLOW-Prox network into ``options.out`` (resumable); its Glow
    is pretrained first into ``out/glow.pt``, or read from the file ``glow``. Every option and,
    with ``resume``, the last checkpoint are checked before the data is prepared; a failing
    command leaves no new folder behind."""
    preset, device, cache, out = check_options(_preset(preset), options, RUN_FILES)
    if options.resume:
        check_resume(out, preset, variant, InpaintExperiment.resume_sections)
    data = prepare_data(preset, cache, device)
    pretrained, _ = _glow(preset, data, os.path.join(out, "glow.pt"), glow, options, device)
    os.makedirs(out, exist_ok=True)
    _, summary, _ = train_variant(InpaintExperiment(preset, data, pretrained), variant, out, seed=options.seed,
                                  device=device, resume=options.resume, progress=options.progress)
    print(f"trained {label(variant)} GLOW-Prox ({preset.name}): best epoch {summary['best_epoch']}, validation loss "
          f"{fmt(summary['best_val_loss'], 5)}; checkpoints in {out}")
    return 0


def evaluate(checkpoint: str, preset: Union[str, InpaintPreset, None], options: RunOptions) -> int:
    """``sdu-ext inpaint eval``: per-layer metrics and the perturbation sweep of a checkpoint
    (printed; with ``options.out`` also ``eval.json``, plots and an image grid there)."""
    from ..evaluate import plots

    _, device, cache, _ = check_options(None, options)
    model, preset, variant = load_model(checkpoint, _preset(preset), device)
    data = prepare_data(preset, cache, device)
    ev = preset.evaluation
    res = evaluate_model(model, data, ev, options.seed, preset.method.first_layer)
    m = res["clean"]
    print(f"{label(variant)} GLOW-Prox ({preset.name}), {m['count']} test images")
    print(table(["layer", "MSE", "PSNR dB", "SSIM", "desc. grad_x", "desc. grad_z"],
                [[str(l), fmt(m["mse"][l], 4), fmt(m["psnr"][l]), fmt(m["ssim"][l], 3),
                  "" if l == 0 else fmt(m["desc_x"][l - 1]), "" if l == 0 else fmt(m["desc_z"][l - 1])]
                 for l in range(len(m["mse"]))], escape=False))
    sw = res["sweep"]
    print("perturbation sweep")
    print(table(["p", "PSNR of x~", "final PSNR", "final SSIM"],
                [[f"{p:g}", fmt(a), fmt(b), fmt(c, 3)] for p, a, b, c in
                 zip(sw["p"], sw["psnr_input"], sw["psnr"], sw["ssim"])], escape=False))
    out = options.out
    if out:
        atomic_write_json(json_safe({"checkpoint": checkpoint, "variant": variant, "preset": preset.name, **res}),
                          os.path.join(out, "eval.json"))
        plots.plot_psnr_layers({variant: m}, os.path.join(out, "layers.png"))
        plots.plot_psnr_sweep({variant: sw}, os.path.join(out, "sweep.png"))
        plots.layer_grid(os.path.join(out, "grid.png"), model, data, ev.grid_images, ev.batch_size,
                         title=f"{label(variant)}")
        print(f"wrote {out}/eval.json, layers.png, sweep.png, grid.png")
    return 0


def _grids(pdir, nets, data, ev, seed):
    """The PNG image grids of a reproduction: each network's layers, the final layers side by
    side, and the final layers under the largest perturbation. Returns that perturbation."""
    from ..evaluate import plots

    L = next(iter(nets.values())).num_layers
    for k, model in nets.items():
        plots.layer_grid(os.path.join(pdir, f"grid_{k}.png"), model, data, ev.grid_images, ev.batch_size,
                         title=f"{label(k)}: clean | masked | layers 1..{L}")
    n = ev.grid_images
    y, x = data.pairs("test")
    finals = [(label(k).split(" (")[0], metrics.run_iterates(m, y[:n], batch_size=ev.batch_size)[0][-1])
              for k, m in nets.items()]
    plots.save_grid(os.path.join(pdir, "grid_final.png"), [("clean", x[:n]), ("masked", y[:n])] + finals,
                    "final layer of each network")
    grid_p = max(ev.ps)
    xp = metrics.perturb(x[:n], grid_p, torch.Generator().manual_seed(seed * 1000 + len(ev.ps)))
    yp = data.measure(xp)
    finals = [(label(k).split(" (")[0], metrics.run_iterates(m, yp, batch_size=ev.batch_size)[0][-1])
              for k, m in nets.items()]
    plots.save_grid(os.path.join(pdir, "grid_perturbed.png"), [("clean", x[:n]), (f"x~ masked, p={grid_p:g}", yp)]
                    + finals, f"perturbation p = {grid_p:g}: final layer of each network")
    return grid_p


def run_record(variant: str, seed: int, ev: Dict[str, Any], first_layer: int, first_eps: Optional[float]
               ) -> Dict[str, Any]:
    """The compact per-seed record of metrics.json's ``"runs"`` from one evaluation ``ev``
    (``{"clean", "under_noise", "sweep", "train"}``): ``layer_psnr_db`` per iterate (index 0 =
    the masked input), the lowest descending frequency over the constrained residuals."""
    t, c = ev.get("train", {}), ev["clean"]
    return {"seed": seed, "final_multipliers": t.get("multipliers"), "max_multipliers": t.get("max_multipliers"),
            "min_descending_frequency": claims.inpaint_descent_stat(c, first_layer, first_eps is not None),
            "layer_psnr_db": c["psnr"], "final_psnr_db": c["psnr"][-1], "best_epoch": t.get("best_epoch"),
            "epochs": t.get("epochs"), "stop": t.get("stop"), "final_lr": t.get("final_lr"),
            "train_seconds": t.get("seconds")}


def reproduce(preset: Union[str, InpaintPreset], options: RunOptions) -> int:
    """``sdu-ext reproduce inpaint``: pretrain the Glow (once, with the run's seed), train every
    variant of the preset for each of its seeds, evaluate them and the untrained network,
    decide the claims over seeds and report into ``options.out`` (default
    ``runs/inpaint_<preset>``); see the module docstring."""
    from ..evaluate import plots

    t_start, cpu_start = time.perf_counter(), report.cpu_seconds()
    load_start = report.machine_info()["load"]
    preset, device, cache, out = start_reproduction("inpaint", _preset(preset), options,
                                                    InpaintExperiment.resume_sections)
    progress = options.progress
    timing = {}
    seeds = seeds_of(preset, options)
    budget = Budget(options.time_budget, len(preset.variants) * len(seeds))

    t0 = time.perf_counter()
    data = prepare_data(preset, cache, device)
    timing["data_seconds"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    glow, glow_info = _glow(preset, data, os.path.join(out, "checkpoints", "glow", "glow.pt"), None, options, device)
    timing["glow_pretrain_seconds"] = time.perf_counter() - t0
    resumed = bool(glow_info and glow_info.get("reused"))
    experiment = InpaintExperiment(preset, data, glow)

    trained, histories, resumed_runs = train_variants(experiment, out, options, device, timing, budget)
    resumed |= resumed_runs
    untrained = build_model(preset, data.mask, glow, options.seed).to(device).eval()

    t0 = time.perf_counter()
    ev, first = preset.evaluation, preset.method.first_layer
    first_eps = preset.method.first_eps if preset.method.first_residual is not None else None
    per_seed: Dict[str, List[dict]] = {}
    for variant, runs in tqdm(trained.items(), desc="evaluate", disable=not progress, leave=False):
        for seed, (model, summary) in zip(seeds, runs):
            per_seed.setdefault(variant, []).append(dict(evaluate_model(model, data, ev, seed, first),
                                                         train=summary))
    per_seed["untrained"] = [evaluate_model(untrained, data, ev, options.seed, first)]
    models = {v: report.mean_tree(rs) for v, rs in per_seed.items()}
    timing["evaluate_seconds"] = time.perf_counter() - t0

    verdicts = claims.assess_inpaint_claims(per_seed, first, preset.method.eps, first_eps)

    t0 = time.perf_counter()
    pdir = os.path.join(out, "plots")
    plots.plot_psnr_layers({label(k): [r["clean"] for r in rs] for k, rs in per_seed.items()},
                           os.path.join(pdir, "layers.png"))
    plots.plot_residual_descending({label(k): [r["clean"] for r in per_seed[k]] for k in trained},
                                   os.path.join(pdir, "descending.png"), "clean")
    plots.plot_residual_descending({label(k): [r["under_noise"] for r in per_seed[k]] for k in trained},
                                   os.path.join(pdir, "descending_noise.png"), f"noise {ev.noise_sigma:g}")
    plots.plot_psnr_sweep({label(k): [r["sweep"] for r in rs] for k, rs in per_seed.items()},
                          os.path.join(pdir, "sweep.png"))
    plots.plot_history({label(k): h for k, h in histories.items()}, os.path.join(pdir, "val_loss.png"))
    nets = {k: runs[0][0] for k, runs in trained.items()} | {"untrained": untrained}
    grid_p = _grids(pdir, nets, data, ev, options.seed)
    timing["plots_seconds"] = time.perf_counter() - t0
    timing["total_seconds"] = time.perf_counter() - t_start
    timing["cpu_seconds"] = report.cpu_seconds() - cpu_start
    timing["resumed"] = bool(resumed)
    timing["time_budget"] = options.time_budget

    results = {"format": FORMAT, "preset": preset.to_dict(), "seed": options.seed, "seeds": seeds,
               "machine": dict(report.machine_info(), load_start=load_start),
               "data": {"train": int(data.train.shape[0]), "val": int(data.val.shape[0]),
                        "test": int(data.test.shape[0]), "info": data.info, "config_key": data.config.key()},
               "glow": glow_info, "timing": timing, "claims": verdicts, "grid_p": grid_p,
               "runs": {v: [run_record(v, seed, r, first, first_eps) for seed, r in zip(seeds, rs)]
                        for v, rs in per_seed.items() if v != "untrained"},
               "models": models, "per_seed": per_seed}
    results["reading"] = claims.inpaint_reading(preset, results)
    report.write_inpaint_report(out, preset, results, report.report_command("inpaint", preset, options, out),
                                results["reading"])
    return report.finish_report(out, results)
