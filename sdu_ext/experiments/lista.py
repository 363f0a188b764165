"""The LISTA experiment (SPEC section 6): constrained vs standard vs standard-with-noise LISTA.

Its shape, shared with :mod:`sdu_ext.experiments.inpaint`:

- config: a :class:`~sdu_ext.presets.Preset` (:func:`~sdu_ext.presets.get_preset`);
- data: :func:`prepare_data` (a :class:`LassoData`, through the data set cache);
- variants: :class:`ListaExperiment` builds each network, its noise and its constraints;
- train: :func:`~sdu_ext.experiments.common.train_variant`, the same for every experiment;
- evaluate: :func:`evaluate_clean`, :func:`evaluate_robustness` (sweep, under noise, OOD
  shift on :func:`ood_sets`), ISTA/FISTA and the learned-optimizer view;
- claims: :func:`~sdu_ext.experiments.claims.assess_lista_claims`;
- report: :func:`~sdu_ext.experiments.report.write_lista_report`.

Entry points (the ``sdu-ext lista ...`` and ``sdu-ext reproduce lista`` commands):
:func:`train`, :func:`evaluate`, :func:`robustness`, :func:`reproduce`.

``reproduce`` trains the three networks on the same data from the same initial weights,
evaluates them (and ISTA/FISTA) with the protocol of SPEC section 6 and writes a report
folder: ``report.md``, ``metrics.json``, ``config.json``, ``plots/*.png``, the training logs
``runs/<model>/history.*`` and, ignored by git through a generated ``.gitignore``, the
checkpoints (``checkpoints/<model>/{best,last}.pt``) and the optima of the shifted test
signals (``cache/ood.pt``). ``resume`` continues killed training runs from their last
checkpoint and reuses finished ones (and the cached OOD optima).

Seeds: the data set is fixed by the preset (its ``data.seed``); the run's seed seeds the
initial weights, the training (shuffling, noise) and every evaluation draw.
"""
import dataclasses
import os
import time
import warnings
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import torch
from torch import nn
from tqdm.auto import tqdm

from ..evaluate.metrics import evaluate_model, iterations_to_match, layer_metrics
from ..evaluate.robustness import (layer_descending, log_gradient_noise, ood_shift, perturbation_sweep,
                                   perturbed_iterates, seeded_generator, shifted_data)
from ..presets import LABELS, Preset, get_preset
from ..train import DescentConstraints
from ..train.checkpoint import atomic_save, atomic_write_json
from . import claims, report
from .common import (Budget, CLIError, Experiment, RunOptions, check_options, check_resume, load_weights,
                     read_checkpoint, seeds_of, start_reproduction, train_variant, train_variants)
from .report import fmt, json_safe, layers_table, table

__all__ = ["FORMAT", "LassoData", "prepare_data", "build_model", "build_noise", "ListaExperiment", "load_model",
           "evaluate_clean", "evaluate_robustness", "ood_sets", "run_record", "train", "evaluate", "robustness",
           "reproduce"]

FORMAT = "sdu_ext.cli/1"  # the checkpoint metadata format of LISTA runs
MATCH_MAX_ITER = 5000     # learned-optimizer view: classic iterations tried to match a network's NMSE
RUN_FILES = ("last.pt", "best.pt", "history.csv")                           # a previous `lista train` run


# ---------------------------------------------------------------- data

@dataclasses.dataclass
class LassoData:
    """A sparse-coding problem and its splits: ``D`` (n, m), ``alpha``, and
    ``train``/``val``/``test`` tuples ``(x (N, n), y_star (N, m))``; ``info`` describes
    how it was made (JSON-ready)."""

    D: torch.Tensor
    alpha: float
    train: tuple
    val: tuple
    test: tuple
    info: dict

    def to(self, device: str) -> "LassoData":
        """The same data on ``device`` (itself on the CPU)."""
        if device == "cpu":
            return self
        return dataclasses.replace(self, D=self.D.to(device), train=_to(self.train, device),
                                   val=_to(self.val, device), test=_to(self.test, device))


def _to(split, device):
    return tuple(t.to(device) for t in split)


def _solver(D, alpha, cfg, tol=None):
    """``solve(x (N, n)) -> y* (N, m)`` with the reference method of the data config
    ``cfg`` (:func:`sdu_ext.solvers.solve_lasso` to the relative duality gap ``tol``,
    default ``cfg.tol``, or ``cfg.ista_steps`` ISTA steps), in float64, returned in x's dtype."""
    from .. import solvers
    from ..problems import Lasso

    problem = Lasso(D.double(), alpha)

    @torch.no_grad()
    def solve(x):
        if cfg.reference == "ista":
            r = solvers.ista(problem, x.double(), max_iter=cfg.ista_steps, tol=0.0, dtype=torch.float64,
                             progress=False)
        else:
            r = solvers.solve_lasso(problem, x.double(), tol=cfg.tol if tol is None else tol, progress=False)
        return r.codes.to(x.dtype)

    return solve


def _drop_zero_optima(split, name, info):
    x, y = split
    keep = y.abs().sum(dim=1) > 0
    dropped = int((~keep).sum())
    if dropped:
        warnings.warn(f"data: dropped {dropped} {name} samples whose LASSO optimum is y* = 0 "
                      "(the ratio forms of the descent constraints cannot use them)")
        info.setdefault("dropped_zero_optimum", {})[name] = dropped
    return x[keep], y[keep]


def prepare_data(cfg, cache_dir: Optional[str] = None, progress: Optional[bool] = None) -> LassoData:
    """The :class:`LassoData` (float32) of a :class:`~sdu_ext.problems.datasets.DatasetConfig`,
    through :func:`sdu_ext.problems.datasets.load` and its cache (``cache_dir``, default
    ``$SDU_EXT_CACHE`` or ``~/.cache/sdu_ext``). ``progress``: progress bars of the
    generation (True / False / None = only for long generations). Samples whose optimum is y* = 0 are
    dropped with a warning (a layer cannot descend towards them once it reaches them,
    and the ratio forms of the constraints divide by their residuals)."""
    from ..problems import datasets

    t0 = time.perf_counter()
    made = datasets.load(cfg, cache_dir=cache_dir, progress=progress)
    info = {"reference": made.info.get("reference"), "config_key": cfg.key()}
    splits = {}
    for name in ("train", "val", "test"):
        sp = made.split(name)
        splits[name] = _drop_zero_optima((sp.x.float().contiguous(), sp.y.float().contiguous()), name, info)
    info["seconds"] = time.perf_counter() - t0
    return LassoData(made.D.float().contiguous(), float(cfg.alpha), splits["train"], splits["val"],
                     splits["test"], info)


# ---------------------------------------------------------------- variants

def build_model(preset: Preset, D: torch.Tensor, alpha: float, seed: int) -> nn.Module:
    """LISTA for ``preset.model`` on dictionary ``D``; the ``paper`` and ``random`` weight
    draws are seeded by ``seed``."""
    from ..models import LISTA

    mc = preset.model
    stds = {"weight_std": mc.weight_std, "y0_std": mc.y0_std} if mc.init == "random" else {}
    return LISTA(D, alpha, mc.num_layers, init=mc.init, tied=mc.tied,
                 generator=torch.Generator().manual_seed(seed), **stds)


def build_noise(preset: Preset, model: nn.Module, seed: int, device: str = "cpu") -> Callable:
    """The training noise of ``preset.method`` for ``model`` (log-gradient noise in the
    reference domain of ``preset.evaluation``'s sweep, or fixed noise), drawn by a generator on
    ``device`` seeded by ``seed`` (the same seed draws other numbers on another device type)."""
    from ..models import FixedNoise

    mc = preset.method
    gen = torch.Generator(device).manual_seed(seed)
    if mc.noise == "fixed":
        return FixedNoise(mc.noise_sigma, generator=gen)
    return log_gradient_noise(model, mc.noise_sigma, mc.noise_negative, preset.evaluation.domain_scale, gen)


class ListaExperiment(Experiment):
    """The LISTA networks of ``preset`` on ``data`` (a :class:`LassoData` on the training device)."""

    format = FORMAT
    resume_sections = ("data", "model", "method")

    def __init__(self, preset: Preset, data: LassoData):
        super().__init__(preset)
        self.data = data

    def build_model(self, seed):
        return build_model(self.preset, self.data.D, self.data.alpha, seed)

    def build_noise(self, model, seed, device="cpu"):
        return build_noise(self.preset, model, seed, device)

    def constraints(self, model):
        mc = self.preset.method
        return DescentConstraints(mc.residual, mc.form, eps=mc.eps)

    def splits(self):
        return self.data.train, self.data.val

    def metadata(self, variant):
        return dict(super().metadata(variant), alpha=self.data.alpha)

    def summary(self, model, trainer, history, mode):
        if mode != "constrained":
            return {"multipliers": None, "max_multipliers": None}
        largest = [max(float(r.get(f"nu_{l}", 0.0)) for r in history) if history else 0.0
                   for l in range(1, self.preset.model.num_layers + 1)]
        return {"multipliers": trainer.multipliers["descent"].tolist(), "max_multipliers": largest}


def _sizes_text(s):
    return f"n={s['n']}, m={s['m']}, L={s['num_layers']}"


def load_model(path: str, preset: Optional[Preset] = None, device: str = "cpu") -> Tuple[nn.Module, Preset, str]:
    """A LISTA checkpoint written by ``sdu-ext`` (``best.pt``/``last.pt`` or a run
    directory) as ``(model, preset, variant)``. ``preset`` must match the problem size the
    checkpoint was trained for; without it the preset stored in the checkpoint is used."""
    path, state = read_checkpoint(path, "lista")
    meta = state.get("metadata") or {}
    weights = state["model"]
    if "D" not in weights:
        raise CLIError(f"checkpoint: {path!r} holds no LISTA weights (no dictionary 'D' in its state dict)")
    n, m = weights["D"].shape
    layers = sum(1 for k in weights if k.startswith("layers.") and k.endswith(".W1"))
    tied = bool(meta.get("preset", {}).get("model", {}).get("tied", False))
    found = {"n": int(n), "m": int(m), "num_layers": meta.get("sizes", {}).get("num_layers", layers)}
    if not tied and layers != found["num_layers"]:
        found["num_layers"] = layers
    stored = Preset.from_dict(meta["preset"]) if meta.get("format") == FORMAT else None
    if preset is None:
        if stored is None:
            raise CLIError(f"checkpoint: {path!r} was not written by `sdu-ext` (no preset in its metadata); "
                           "pass --preset to say how it was trained")
        preset = stored
    if preset.sizes() != found:
        raise CLIError(f"checkpoint: {path!r} was trained for another problem size ({_sizes_text(found)}); "
                       f"preset {preset.name!r} has {_sizes_text(preset.sizes())}")
    alpha = float(meta.get("alpha", preset.data.alpha))
    model = load_weights(build_model(preset, weights["D"].float(), alpha, 0), weights, path, preset, device)
    return model, preset, meta.get("variant", "unknown")


# ---------------------------------------------------------------- evaluate

def evaluate_clean(model: nn.Module, test: tuple, ev, seed: int) -> Dict[str, Any]:
    """Per-layer metrics (:func:`~sdu_ext.evaluate.layer_metrics`) on the clean test set ``(x, y*)``."""
    return evaluate_model(model, *test, generator=torch.Generator(model.D.device).manual_seed(seed),
                          batch_size=ev.batch_size)


def evaluate_robustness(model: nn.Module, test: tuple, shifted: List[dict], ev, negative: str, seed: int,
                        progress: bool = False) -> Dict[str, Any]:
    """The perturbation sweep, the descending frequency under noise and the OOD shift (on
    :func:`ood_sets`' ``shifted``) of one model: ``{"sweep", "under_noise", "ood"}``."""
    sweep = perturbation_sweep(model, *test, ev.sigmas, seed=seed, negative=negative,
                               domain_scale=ev.domain_scale, batch_size=ev.batch_size, progress=progress)
    it, out = perturbed_iterates(model, test[0], ev.perturb_sigma, seeded_generator(seed, 10_000), negative,
                                 ev.domain_scale, ev.batch_size, return_outputs=True)
    under_noise = layer_metrics(it, *test, model.problem)
    ood = ood_shift(model, shifted, test[1], generator_seed=seed, batch_size=ev.batch_size)
    return {"sweep": sweep,
            "under_noise": {"sigma": ev.perturb_sigma, "descending": under_noise["descending"],
                            "layer_descending": layer_descending(it, out, test[1]).tolist(),
                            "distance_mean": under_noise["distance_mean"], "nmse_db": under_noise["nmse_db"]},
            "ood": ood}


def ood_sets(data: LassoData, cfg, ev, seed: int, cache: Optional[str] = None, progress: bool = False
             ) -> List[dict]:
    """The OOD test sets (shifted test signals and their optima, solved with the reference
    method of the data config ``cfg`` to ``ev.ood_tol``), on the device of ``data``,
    cached (on the CPU) in the file ``cache``."""
    device = data.test[0].device
    key = {"data": data.info.get("config_key"), "shifts": list(ev.shifts), "clip": ev.ood_clip, "seed": seed,
           "test": int(data.test[0].shape[0]), "tol": ev.ood_tol}
    sets = None
    if cache is not None and os.path.isfile(cache):
        try:
            state = torch.load(cache, map_location="cpu", weights_only=True)
        except Exception:  # noqa: BLE001 - a broken cache is rebuilt
            state = None
        if isinstance(state, dict) and state.get("key") == key:
            sets = state["sets"]
    if sets is None:
        solve = _solver(data.D, data.alpha, cfg, ev.ood_tol)
        sets = shifted_data(data.test[0], solve, ev.shifts, seed=seed, clip=ev.ood_clip, progress=progress)
        sets = [{k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in s.items()} for s in sets]
        if cache is not None:
            atomic_save({"key": key, "sets": sets}, cache)
    return [{k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in s.items()} for s in sets]


# ---------------------------------------------------------------- entry points

def _preset(preset: Union[str, Preset, None]) -> Optional[Preset]:
    return get_preset(preset) if isinstance(preset, str) else preset


def train(preset: Union[str, Preset], variant: str, options: RunOptions) -> int:
    """``sdu-ext lista train``: one network of the comparison into ``options.out`` (resumable).
    Every option and, with ``resume``, the last checkpoint are checked before the data is
    prepared and the folder made."""
    preset, device, cache, out = check_options(_preset(preset), options, RUN_FILES)
    if options.resume:
        check_resume(out, preset, variant, ListaExperiment.resume_sections)
    data = prepare_data(preset.data, cache, progress=options.progress)
    os.makedirs(out, exist_ok=True)
    _, summary, _ = train_variant(ListaExperiment(preset, data.to(device)), variant, out, seed=options.seed,
                                  device=device, resume=options.resume, progress=options.progress)
    print(f"trained {LABELS[variant]} LISTA ({preset.name}): best epoch {summary['best_epoch']}, validation loss "
          f"{fmt(summary['best_val_loss'], 4)}; checkpoints in {out}")
    return 0


def _load_for_eval(checkpoint, preset, options):
    _, device, cache, _ = check_options(None, options)
    model, preset, variant = load_model(checkpoint, _preset(preset), device)
    data = prepare_data(preset.data, cache, progress=options.progress)
    if not torch.allclose(model.D.cpu().float(), data.D, atol=1e-6):
        raise CLIError(f"checkpoint: {checkpoint!r} was trained on another dictionary than the preset's data "
                       "(a different data seed or data set)")
    return model, preset, variant, data.to(device)


def evaluate(checkpoint: str, preset: Union[str, Preset, None], options: RunOptions) -> int:
    """``sdu-ext lista eval``: per-layer metrics of a checkpoint on the clean test set (printed;
    with ``options.out`` also ``eval.json`` and plots there)."""
    from ..evaluate import plots

    model, preset, variant, data = _load_for_eval(checkpoint, preset, options)
    clean = evaluate_clean(model, data.test, preset.evaluation, options.seed)
    print(f"{LABELS.get(variant, variant)} LISTA ({preset.name}), {clean['count']} test samples")
    print(layers_table({"": clean}, escape=False))
    print(f"final: NMSE {fmt(clean['nmse_db'][-1])} dB, ||y_L - y*|| {fmt(clean['distance_mean'][-1], 4)}, "
          f"||y_L||_1 {fmt(clean['l1_mean'][-1])} (||y*||_1 {fmt(clean['l1_star'])})")
    out = options.out
    if out:
        atomic_write_json(json_safe({"checkpoint": checkpoint, "variant": variant, "preset": preset.name,
                                     "clean": clean}), os.path.join(out, "eval.json"))
        plots.plot_layers({variant: clean}, os.path.join(out, "layers.png"))
        plots.plot_descending({variant: clean}, os.path.join(out, "descending.png"))
        print(f"wrote {out}/eval.json, layers.png, descending.png")
    return 0


def robustness(checkpoint: str, preset: Union[str, Preset, None], options: RunOptions) -> int:
    """``sdu-ext lista robustness``: perturbation sweep and OOD shift of a checkpoint (printed;
    with ``options.out`` also ``robustness.json`` and plots there)."""
    from ..evaluate import plots

    model, preset, variant, data = _load_for_eval(checkpoint, preset, options)
    ev = preset.evaluation
    sets = ood_sets(data, preset.data, ev, options.seed, progress=options.progress)
    rob = evaluate_robustness(model, data.test, sets, ev, preset.method.noise_negative, options.seed,
                              progress=options.progress)
    sw, od = rob["sweep"], rob["ood"]
    print(f"{LABELS.get(variant, variant)} LISTA ({preset.name}): perturbation sweep")
    print(table(["sigma", "final ||y_L - y*||", "||y_L||_1", "min desc. freq."],
                [[f"{s:g}", fmt(d), fmt(l1), fmt(min(de))] for s, d, l1, de in
                 zip(sw["sigma"], sw["final_distance_mean"], sw["final_l1_mean"], sw["descending"])], escape=False))
    print("OOD shift")
    print(table(["p", "NMSE vs new y~* (dB)", "NMSE vs old y* (dB)"],
                [[f"{p:g}", fmt(a), fmt(b)] for p, a, b in zip(od["p"], od["final_nmse_db"], od["final_nmse_db_old"])],
                escape=False))
    out = options.out
    if out:
        atomic_write_json(json_safe({"checkpoint": checkpoint, "variant": variant, "preset": preset.name,
                                     **rob}), os.path.join(out, "robustness.json"))
        plots.plot_sweep({variant: sw}, os.path.join(out, "sweep.png"))
        plots.plot_ood({variant: od}, os.path.join(out, "ood.png"))
        plots.plot_descending({variant: rob["under_noise"]}, os.path.join(out, "descending_noise.png"),
                              title=f"descending frequency under noise (sigma = {ev.perturb_sigma:g})")
        print(f"wrote {out}/robustness.json, sweep.png, ood.png, descending_noise.png")
    return 0


def run_record(variant: str, seed: int, ev: Dict[str, Any]) -> Dict[str, Any]:
    """The compact per-seed record of metrics.json's ``"runs"`` from one evaluation ``ev``
    (``{"clean", "sweep", "under_noise", "ood", "train"}``)."""
    t, c = ev["train"], ev["clean"]
    return {"seed": seed, "final_multipliers": t.get("multipliers"), "max_multipliers": t.get("max_multipliers"),
            "min_descending_frequency": min(c["descending"]), "descending": c["descending"],
            "final_nmse_db": c["nmse_db"][-1], "layer_nmse_db": c["nmse_db"], "best_epoch": t["best_epoch"],
            "epochs": t["epochs"], "stop": t["stop"], "final_lr": t.get("final_lr"), "train_seconds": t["seconds"]}


def reproduce(preset: Union[str, Preset], options: RunOptions) -> int:
    """``sdu-ext reproduce lista``: train every variant of the preset for each of its seeds,
    evaluate them (and ISTA/FISTA), decide the claims over seeds and report into
    ``options.out`` (default ``runs/lista_<preset>``); see the module docstring."""
    from ..evaluate import plots
    from ..models import FISTA, ISTA
    from ..problems import Lasso

    t_start, cpu_start = time.perf_counter(), report.cpu_seconds()
    load_start = report.machine_info()["load"]
    preset, device, cache, out = start_reproduction("lista", _preset(preset), options,
                                                    ListaExperiment.resume_sections)
    progress = options.progress
    timing = {}
    seeds = seeds_of(preset, options)
    budget = Budget(options.time_budget, len(preset.variants) * len(seeds))

    t0 = time.perf_counter()
    data = prepare_data(preset.data, cache, progress=progress)
    timing["data_seconds"] = time.perf_counter() - t0
    data_dev = data.to(device)
    experiment = ListaExperiment(preset, data_dev)

    trained, histories, resumed = train_variants(experiment, out, options, device, timing, budget)

    t0 = time.perf_counter()
    ev = preset.evaluation
    sets = ood_sets(data_dev, preset.data, ev, options.seed, os.path.join(out, "cache", "ood.pt"), progress=progress)
    timing["ood_optima_seconds"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    per_seed: Dict[str, List[dict]] = {}
    for variant, runs in tqdm(trained.items(), desc="evaluate", disable=not progress, leave=False):
        for seed, (model, summary) in zip(seeds, runs):
            rob = evaluate_robustness(model, data_dev.test, sets, ev, preset.method.noise_negative, seed)
            per_seed.setdefault(variant, []).append({"train": summary,
                                                     "clean": evaluate_clean(model, data_dev.test, ev, seed), **rob})
    models = {v: {"train": report.mean_tree([r["train"] for r in rs]),
                  "clean": report.mean_tree([r["clean"] for r in rs]),
                  "robustness": {k: report.mean_tree([r[k] for r in rs]) for k in ("sweep", "under_noise", "ood")}}
              for v, rs in per_seed.items()}
    L = preset.model.num_layers
    D = data_dev.D
    baselines = {"ISTA": evaluate_model(ISTA(D, data.alpha, L), *data_dev.test, batch_size=ev.batch_size),
                 "FISTA": evaluate_model(FISTA(D, data.alpha, L), *data_dev.test, batch_size=ev.batch_size)}
    timing["evaluate_seconds"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    targets = [models[k]["clean"]["nmse_db"][-1] for k in models]
    matching = {"max_iter": MATCH_MAX_ITER}
    problem = Lasso(data_dev.D, data.alpha)
    for method in ("ista", "fista"):
        its = iterations_to_match(problem, *data_dev.test, targets, method=method, max_iter=MATCH_MAX_ITER)
        matching[method] = dict(zip(models, its))
    timing["learned_optimizer_seconds"] = time.perf_counter() - t0

    verdicts = claims.assess_lista_claims(per_seed)

    t0 = time.perf_counter()
    pdir = os.path.join(out, "plots")
    clean = {LABELS[k]: [r["clean"] for r in rs] for k, rs in per_seed.items()}
    plots.plot_layers(clean | baselines, os.path.join(pdir, "layers.png"))
    plots.plot_descending(clean | baselines, os.path.join(pdir, "descending.png"))
    plots.plot_descending({LABELS[k]: [r["under_noise"] for r in rs] for k, rs in per_seed.items()},
                          os.path.join(pdir, "descending_noise.png"),
                          title=f"descending frequency under noise (sigma = {ev.perturb_sigma:g})")
    plots.plot_sweep({LABELS[k]: [r["sweep"] for r in rs] for k, rs in per_seed.items()},
                     os.path.join(pdir, "sweep.png"))
    plots.plot_ood({LABELS[k]: [r["ood"] for r in rs] for k, rs in per_seed.items()}, os.path.join(pdir, "ood.png"))
    plots.plot_history({LABELS[k]: h for k, h in histories.items()}, os.path.join(pdir, "val_loss.png"))
    timing["plots_seconds"] = time.perf_counter() - t0
    timing["total_seconds"] = time.perf_counter() - t_start
    timing["cpu_seconds"] = report.cpu_seconds() - cpu_start
    timing["resumed"] = bool(resumed)
    timing["time_budget"] = options.time_budget

    info = {k: v for k, v in data.info.items() if k != "config_key"}
    results = {"format": FORMAT, "preset": preset.to_dict(), "seed": options.seed, "seeds": seeds,
               "machine": dict(report.machine_info(), load_start=load_start),
               "data": {"train": int(data.train[0].shape[0]), "val": int(data.val[0].shape[0]),
                        "test": int(data.test[0].shape[0]), "info": info},
               "timing": timing, "claims": verdicts,
               "runs": {v: [run_record(v, seed, r) for seed, r in zip(seeds, rs)] for v, rs in per_seed.items()},
               "models": models, "per_seed": per_seed, "baselines": baselines, "iterations_to_match": matching}
    results["reading"] = claims.lista_reading(preset, results)
    report.write_lista_report(out, preset, data, results, report.report_command("lista", preset, options, out),
                              results["reading"])
    return report.finish_report(out, results)
