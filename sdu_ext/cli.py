"""The ``sdu-ext`` command (also ``python -m sdu_ext``).

    sdu-ext lista train      --preset quick --mode constrained --out runs/c
    sdu-ext lista eval       --checkpoint runs/c [--preset quick] [--out DIR]
    sdu-ext lista robustness --checkpoint runs/c [--preset quick] [--out DIR]
    sdu-ext reproduce lista  --preset quick --out results/lista_quick [--resume]

The inpainting commands (``sdu-ext inpaint ...``, ``sdu-ext reproduce inpaint``) live in
:mod:`sdu_ext.cli_inpaint` and share this module's options, checkpoint reading and report
helpers.

``reproduce`` trains the constrained, the standard and the standard-with-noise LISTA on
the same data from the same initial weights, evaluates the three (and ISTA/FISTA) with
the protocol of SPEC section 6 and writes a report folder: ``report.md``,
``metrics.json``, ``plots/*.png``, the training logs ``runs/<model>/history.*``, and,
ignored by git through a generated ``.gitignore``, the checkpoints
(``checkpoints/<model>/{best,last}.pt``) and the optima of the shifted test signals
(``cache/ood.pt``). Data sets come from :func:`sdu_ext.problems.datasets.load` and its
cache (``--data-cache DIR``, default ``$SDU_EXT_CACHE`` or ``~/.cache/sdu_ext``).
``--resume`` continues killed training runs from their last checkpoint and reuses
finished ones (and the cached OOD optima).

Seeds: the data set is fixed by the preset (its ``data.seed``); ``--seed`` seeds the
initial weights, the training (shuffling, noise) and every evaluation draw.
"""
import argparse
import contextlib
import dataclasses
import datetime
import math
import os
import platform
import sys
import time
import warnings

import torch
from tqdm.auto import tqdm

from . import presets as P
from .evaluate import metrics as M
from .evaluate import robustness as R
from .presets import LABELS, VARIANTS
from .train import NonFiniteError, PrimalDualTrainer, load_checkpoint
from .train.checkpoint import atomic_save, atomic_write_json, atomic_write_text

CLI_FORMAT = "sdu_ext.cli/1"
MODES = {"constrained": "constrained", "standard": "standard", "unconstrained": "standard", "noisy": "noisy"}
# Thresholds of the report's verdicts (stated in the report).
NEAR_ONE = 0.95        # "descends at every layer": descending frequency >= this at every layer
CLOSE_DB = 1.0         # "final-layer accuracy close": final NMSE within this many dB
DEGRADED = 0.1         # the sweep claim is judged where standard's final distance rises by more than 10 %
TIE_DB = 0.1           # OOD: rises of the final NMSE within 0.1 dB are ties
TIE_REL = 0.02         # sweep: degradations within 2 % of each other are ties
MATCH_MAX_ITER = 5000  # learned-optimizer view: classic iterations tried to match a network's NMSE


class CLIError(Exception):
    """A usage error reported as ``sdu-ext: error: <message>`` with exit status 2."""


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


def _solver(D, alpha, cfg, tol=None):
    """``solve(x (N, n)) -> y* (N, m)`` with the reference method of the data config
    ``cfg`` (:func:`sdu_ext.solvers.solve_lasso` to the relative duality gap ``tol``,
    default ``cfg.tol``, or ``cfg.ista_steps`` ISTA steps), in float64, returned in x's dtype."""
    from . import solvers
    from .problems import Lasso

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


def prepare_data(cfg, cache_dir=None, progress=False):
    """The :class:`LassoData` (float32) of a :class:`~sdu_ext.problems.datasets.DatasetConfig`,
    through :func:`sdu_ext.problems.datasets.load` and its cache (``cache_dir``, default
    ``$SDU_EXT_CACHE`` or ``~/.cache/sdu_ext``). Samples whose optimum is y* = 0 are
    dropped with a warning (a layer cannot descend towards them once it reaches them,
    and the ratio forms of the constraints divide by their residuals)."""
    from .problems import datasets

    t0 = time.perf_counter()
    made = datasets.load(cfg, cache_dir=cache_dir, progress=progress or None)
    info = {"reference": made.info.get("reference"), "config_key": cfg.key()}
    splits = {}
    for name in ("train", "val", "test"):
        sp = made.split(name)
        splits[name] = _drop_zero_optima((sp.x.float().contiguous(), sp.y.float().contiguous()), name, info)
    info["seconds"] = time.perf_counter() - t0
    return LassoData(made.D.float().contiguous(), float(cfg.alpha), splits["train"], splits["val"],
                     splits["test"], info)


# ---------------------------------------------------------------- models and training

def build_model(preset, D, alpha, seed):
    """LISTA for ``preset.model`` on dictionary ``D``; the ``paper`` weight draw is seeded by ``seed``."""
    from .models import LISTA

    mc = preset.model
    return LISTA(D, alpha, mc.num_layers, init=mc.init, tied=mc.tied,
                 generator=torch.Generator().manual_seed(seed))


def build_noise(preset, model, seed):
    """The training noise of ``preset.method`` for ``model`` (log-gradient noise in the
    reference domain of ``preset.evaluation``'s sweep, or fixed noise)."""
    from .models import FixedNoise

    mc = preset.method
    gen = torch.Generator().manual_seed(seed)
    if mc.noise == "fixed":
        return FixedNoise(mc.noise_sigma, generator=gen)
    return R.log_gradient_noise(model, mc.noise_sigma, mc.noise_negative, preset.evaluation.domain_scale, gen)


def _metadata(preset, variant, data):
    return {"format": CLI_FORMAT, "preset": preset.to_dict(), "variant": variant,
            "sizes": preset.sizes(), "alpha": data.alpha}


def train_variant(preset, variant, data, run_dir, *, seed=0, device="cpu", resume=False, progress=True):
    """Train one network of the comparison into ``run_dir`` (checkpoints and logs).

    ``variant``: ``"constrained"``, ``"standard"`` or ``"noisy"``. Returns
    ``(model, summary, history)`` with the best weights loaded; ``summary`` holds the best
    epoch, the validation loss, the multipliers (final and largest) and the wall-clock
    seconds of this call. ``resume`` continues ``run_dir/last.pt`` when it exists; it must
    come from the same data, model and method (CLIError otherwise).
    """
    from .train import DescentConstraints

    mode, noisy = VARIANTS[variant]
    last = os.path.join(run_dir, "last.pt")
    if resume and os.path.isfile(last):
        meta = load_checkpoint(last).get("metadata") or {}
        old, new = meta.get("preset", {}), preset.to_dict()
        diff = [k for k in ("data", "model", "method") if old.get(k) != new[k]]
        if diff or meta.get("variant", variant) != variant:
            raise CLIError(f"resume: {last!r} was trained with another {' and '.join(diff) or 'variant'} "
                           f"configuration than preset {preset.name!r}; run without --resume to start afresh")
    torch.manual_seed(seed)
    model = build_model(preset, data.D, data.alpha, seed)
    noise = build_noise(preset, model, seed) if noisy else None
    cfg = dataclasses.replace(preset.train, mode=mode, seed=seed, device=device, checkpoint_dir=run_dir,
                              log_dir=run_dir, progress=progress, tensorboard=False)
    mc = preset.method
    constraints = DescentConstraints(mc.residual, mc.form, eps=mc.eps)
    trainer = PrimalDualTrainer(model, data.train, data.val, cfg, constraints, noise=noise,
                                metadata=_metadata(preset, variant, data))
    t0 = time.perf_counter()
    with _resume_errors(run_dir):
        history = trainer.fit(resume=resume)
    nus = None
    if mode == "constrained":
        nus = [max(float(r.get(f"nu_{l}", 0.0)) for r in history) if history else 0.0
               for l in range(1, preset.model.num_layers + 1)]
    summary = {"epochs": len(history), "best_epoch": trainer.best_epoch, "best_val_loss": trainer.best_loss,
               "multipliers": trainer.multipliers["descent"].tolist() if mode == "constrained" else None,
               "max_multipliers": nus,
               "seconds": time.perf_counter() - t0,
               "train_seconds_logged": float(sum(r.get("time_s", 0.0) for r in history))}
    model.eval()
    return model, summary, history


@contextlib.contextmanager
def _resume_errors(run_dir):
    """Turn the trainer's ValueError of a checkpoint that ``--resume`` cannot continue into a
    CLIError that says how to start ``run_dir`` afresh."""
    try:
        yield
    except ValueError as e:
        if str(e).startswith("resume:"):
            raise CLIError(f"{e} (run without --resume to start {run_dir!r} afresh)") from e
        raise


def _read_checkpoint(path, kind):
    """``(file, state)`` of the checkpoint ``path`` (a file, or a run directory holding
    ``best.pt`` or ``last.pt``) written by ``sdu-ext <kind> train``; CLIError otherwise."""
    hint = f"(train one with `sdu-ext {kind} train --out DIR`)"
    if os.path.isdir(path):
        found = [os.path.join(path, n) for n in ("best.pt", "last.pt") if os.path.isfile(os.path.join(path, n))]
        if not found:
            raise CLIError(f"checkpoint: no best.pt or last.pt in the directory {path!r} {hint}")
        path = found[0]
    elif not os.path.isfile(path):
        raise CLIError(f"checkpoint: no file at {path!r} {hint}")
    try:
        return path, load_checkpoint(path)
    except (FileNotFoundError, ValueError) as e:
        raise CLIError(str(e)) from e


def _load_weights(model, weights, path, preset, device):
    """``model`` with the state dict ``weights`` of the checkpoint ``path``, on ``device`` in
    eval mode; CLIError when they do not fit (another size than ``preset``'s)."""
    try:
        model.load_state_dict(weights)
    except RuntimeError as e:
        raise CLIError(f"checkpoint: the weights in {path!r} do not fit preset {preset.name!r}: {e}") from e
    return model.to(device).eval()


def _sizes_text(s):
    return f"n={s['n']}, m={s['m']}, L={s['num_layers']}"


def load_model(path, preset=None, device="cpu"):
    """A LISTA checkpoint written by this command (``best.pt``/``last.pt`` or a run
    directory) as ``(model, preset, variant)``. ``preset`` (a :class:`Preset`) must
    match the problem size the checkpoint was trained for; without it the preset
    stored in the checkpoint is used."""
    path, state = _read_checkpoint(path, "lista")
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
    stored = P.Preset.from_dict(meta["preset"]) if meta.get("format") == CLI_FORMAT else None
    if preset is None:
        if stored is None:
            raise CLIError(f"checkpoint: {path!r} was not written by `sdu-ext` (no preset in its metadata); "
                           "pass --preset to say how it was trained")
        preset = stored
    if preset.sizes() != found:
        raise CLIError(f"checkpoint: {path!r} was trained for another problem size ({_sizes_text(found)}); "
                       f"preset {preset.name!r} has {_sizes_text(preset.sizes())}")
    alpha = float(meta.get("alpha", preset.data.alpha))
    model = _load_weights(build_model(preset, weights["D"].float(), alpha, 0), weights, path, preset, device)
    return model, preset, meta.get("variant", "unknown")


def _check_same_dictionary(model, data, path):
    if not torch.allclose(model.D.cpu().float(), data.D, atol=1e-6):
        raise CLIError(f"checkpoint: {path!r} was trained on another dictionary than the preset's data "
                       "(a different data seed or data set)")


# ---------------------------------------------------------------- evaluation

def _to(split, device):
    return tuple(t.to(device) for t in split)


def evaluate_clean(model, test, ev, seed):
    """Per-layer metrics on the clean test set."""
    return M.evaluate_model(model, *test, generator=torch.Generator(model.D.device).manual_seed(seed),
                            batch_size=ev.batch_size)


def evaluate_robustness(model, test, shifted, ev, negative, seed, progress=False):
    """The perturbation sweep, descending frequency under noise and the OOD shift of one model."""
    sweep = R.perturbation_sweep(model, *test, ev.sigmas, seed=seed, negative=negative,
                                 domain_scale=ev.domain_scale, batch_size=ev.batch_size, progress=progress)
    it, out = R.perturbed_iterates(model, test[0], ev.perturb_sigma, R._generator(seed, 10_000), negative,
                                   ev.domain_scale, ev.batch_size, return_outputs=True)
    under_noise = M.layer_metrics(it, *test, model.problem)
    ood = R.ood_shift(model, shifted, test[1], generator_seed=seed, batch_size=ev.batch_size)
    return {"sweep": sweep,
            "under_noise": {"sigma": ev.perturb_sigma, "descending": under_noise["descending"],
                            "layer_descending": R.layer_descending(it, out, test[1]).tolist(),
                            "distance_mean": under_noise["distance_mean"], "nmse_db": under_noise["nmse_db"]},
            "ood": ood}


def ood_sets(data, cfg, ev, seed, cache=None, progress=False):
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
        sets = R.shifted_data(data.test[0], solve, ev.shifts, seed=seed, clip=ev.ood_clip, progress=progress)
        sets = [{k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in s.items()} for s in sets]
        if cache is not None:
            atomic_save({"key": key, "sets": sets}, cache)
    return [{k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in s.items()} for s in sets]


# ---------------------------------------------------------------- text output

def _f(v, digits=2):
    if v is None:
        return "-"
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    a = abs(v)
    if a != 0 and (a >= 1e5 or a < 1e-3):
        return f"{v:.{digits}e}"
    return f"{v:.{digits}f}"


def _cell(c):
    return str(c).replace("|", "\\|")


def _table(header, rows, escape=True):
    """A markdown table; ``escape`` protects pipes inside cells (off for the terminal)."""
    cell = _cell if escape else str
    lines = ["| " + " | ".join(map(cell, header)) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(map(cell, row)) + " |" for row in rows]
    return "\n".join(lines)


def layers_table(results, escape=True):
    """Markdown table: descending frequency and NMSE per layer, one column pair per model."""
    names = list(results)
    L = len(next(iter(results.values()))["descending"])
    header = ["layer"] + [f"desc. freq. {n}" for n in names] + [f"NMSE dB {n}" for n in names]
    rows = []
    for l in range(L + 1):
        row = [str(l) if l else "0 (init)"]
        row += ["" if l == 0 else _f(results[n]["descending"][l - 1]) for n in names]
        row += [_f(results[n]["nmse_db"][l]) for n in names]
        rows.append(row)
    return _table(header, rows, escape)


# ---------------------------------------------------------------- claims

def _compare(mine, other, keys, tie, unit, what, relative=False):
    """Verdict of "mine < other" at each key; differences within ``tie`` (relative to
    ``other`` when ``relative``) count as ties."""
    margin = [tie * abs(b) if relative else tie for b in other]
    wins = [k for k, a, b, t in zip(keys, mine, other, margin) if a < b - t]
    losses = [k for k, a, b, t in zip(keys, mine, other, margin) if a > b + t]
    ties = len(keys) - len(wins) - len(losses)
    verdict = "holds" if len(wins) == len(keys) else ("partly holds" if wins else "does not hold")
    text = f"{what} at {len(wins)} of {len(keys)} ({', '.join(wins) if wins else 'none'})"
    if ties:
        text += f"; {ties} within {tie:.0%} (ties)" if relative else f"; {ties} within {tie:g}{unit} (ties)"
    if losses:
        text += f"; worse at {', '.join(losses)}"
    return verdict, text


def assess_claims(models):
    """The paper's claims checked on ``models`` (name -> {"clean", "sweep", "ood", "under_noise"});
    a list of ``{"claim", "verdict", "evidence"}``. The thresholds are stated in the evidence:
    descending frequency "near 1" means >= NEAR_ONE at every layer; degradation under the
    sweep is the final distance divided by the clean one, compared where the perturbation
    raises the standard network's error by more than DEGRADED; OOD degradation is the
    rise of the final NMSE over the clean one, ties within TIE_DB dB."""
    c, s, n = models["constrained"], models["standard"], models["noisy"]
    out = []
    dc, ds, dn = (min(x["clean"]["descending"]) for x in (c, s, n))
    out.append({"claim": "constrained LISTA descends at every layer (descending frequency near 1)",
                "verdict": "holds" if dc >= NEAR_ONE else "does not hold",
                "evidence": f"lowest per-layer descending frequency {_f(dc)} (near 1: >= {NEAR_ONE:g})"})
    out.append({"claim": "standard LISTA does not descend at every layer",
                "verdict": "holds" if ds < NEAR_ONE else "does not hold",
                "evidence": f"lowest per-layer descending frequency: standard {_f(ds)}, standard + noise {_f(dn)}"})
    un = [min(x["under_noise"]["descending"]) for x in (c, s, n)]
    sig = c["under_noise"]["sigma"]
    out.append({"claim": f"under noise (sigma = {sig:g}) constrained descends at every layer, standard does not",
                "verdict": "holds" if un[0] >= NEAR_ONE > un[1] else "does not hold",
                "evidence": f"lowest per-layer descending frequency under noise: constrained {_f(un[0])}, "
                            f"standard {_f(un[1])}, standard + noise {_f(un[2])}"})
    sigmas = c["sweep"]["sigma"]

    def degradation(x):
        clean = x["clean"]["distance_mean"][-1]
        return [d / clean for d in x["sweep"]["final_distance_mean"]]

    material = [i for i, r in enumerate(degradation(s)) if r > 1 + DEGRADED]
    for other, label in (("standard", "standard"), ("noisy", "standard + noise")):
        keys = [f"sigma {sigmas[i]:g}" for i in material]
        verdict, text = _compare([degradation(c)[i] for i in material],
                                 [degradation(models[other])[i] for i in material], keys, TIE_REL, "",
                                 "smaller final distance / clean final distance", relative=True)
        out.append({"claim": f"constrained degrades less than {label} under the perturbation sweep",
                    "verdict": verdict,
                    "evidence": text + f" (sigmas where standard's error rises by more than {DEGRADED:.0%})"})
    ps = [f"p {p:g}" for p in c["ood"]["p"]]
    for other, label in (("standard", "standard"), ("noisy", "standard + noise")):
        o = models[other]
        rise_c = [v - c["clean"]["nmse_db"][-1] for v in c["ood"]["final_nmse_db"]]
        rise_o = [v - o["clean"]["nmse_db"][-1] for v in o["ood"]["final_nmse_db"]]
        verdict, text = _compare(rise_c, rise_o, ps, TIE_DB, " dB", "smaller rise of the final NMSE (vs y~*)")
        out.append({"claim": f"constrained degrades less than {label} under the OOD shift",
                    "verdict": verdict, "evidence": text})
    fc, fs = c["clean"]["nmse_db"][-1], s["clean"]["nmse_db"][-1]
    out.append({"claim": "constrained loses little final-layer accuracy against standard",
                "verdict": "holds" if fc <= fs + CLOSE_DB else "does not hold",
                "evidence": f"final NMSE {_f(fc)} dB vs {_f(fs)} dB (difference {_f(fc - fs)} dB; "
                            f"close: within {CLOSE_DB:g} dB)"})
    return out


# ---------------------------------------------------------------- report

def _machine():
    return {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "cpu_count": os.cpu_count(), "threads": torch.get_num_threads(),
            "date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")}


def _report_head(title, command, results):
    """The lines of a report up to its setup: the title and how, where and how fast it was made."""
    mach, timing = results["machine"], results["timing"]
    return [f"# {title}", "",
            f"Generated by `{command}` on {mach['date']} ({mach['platform']}, {mach['cpu_count']} CPUs, "
            f"{mach['threads']} torch thread{'s' if mach['threads'] != 1 else ''}, torch {mach['torch']}); "
            f"this invocation took {timing['total_seconds']:.0f} s wall-clock"
            + (" (it resumed earlier work, so this is not the cost of a fresh run)" if timing.get("resumed") else "")
            + ". Generated by the command; do not edit by hand.", "",
            "## Setup", ""]


def _report_claims(claims, reading):
    """The lines of a report's claims table and its plain-language reading (paragraphs)."""
    return ["## The paper's claims", "",
            _table(["claim", "verdict", "evidence"], [[r["claim"], f"**{r['verdict']}**", r["evidence"]]
                                                      for r in claims]), "",
            "## Reading", ""] + [p + "\n" for p in reading]


def _report_tail(timing, kept):
    """The last lines of a report: the timing table and the files, ``kept`` saying which
    files stay out of git."""
    return ["## Timing", "",
            _table(["phase", "seconds"], [[k.replace("_seconds", ""), f"{v:.1f}"]
                                          for k, v in timing.items() if k.endswith("_seconds")]), "",
            "## Files", "",
            "`metrics.json` (every number above), `config.json` (the preset), `plots/`, "
            "`runs/<network>/history.{csv,json}` (per-epoch logs). " + kept, ""]


def write_report(out, preset, data, results, command):
    """``report.md`` of a reproduction from the ``metrics.json`` content ``results``."""
    models, base, timing = results["models"], results["baselines"], results["timing"]
    names = list(models)
    lab = {k: LABELS[k] for k in names}
    d, mc, me, tc, ev = preset.data, preset.model, preset.method, preset.train, preset.evaluation
    setup = [f"- Data: `{d.name}`, n = {d.n}, m = {d.m}, alpha = {d.alpha:g}"
             + (f", code density {d.density:g}" + (f", SNR {d.snr_db:g} dB" if d.snr_db is not None else "")
                if d.name == "synthetic" else f", dictionary `{d.dictionary}`")
             + f"; {data.train[0].shape[0]} training / {data.val[0].shape[0]} validation / "
               f"{data.test[0].shape[0]} test samples (data seed {d.seed}); y* = "
             + (f"the LASSO optimum, certified to a relative duality gap of {d.tol:g} (`solve_lasso`). "
                if d.reference == "solve_lasso" else f"{d.ista_steps} ISTA steps (the research code's). ")
             + (f"Dropped samples with y* = 0: {data.info['dropped_zero_optimum']}." if data.info.get(
                 "dropped_zero_optimum") else ""),
             f"- Network: LISTA, L = {mc.num_layers} untied layers" if not mc.tied else
             f"- Network: LISTA, L = {mc.num_layers} tied layers",
             f"  (`{mc.init}` initialisation); the three networks start from the same weights (seed "
             f"{results['seed']}) and see the same batches.",
             f"- constrained: loss on the last layer + one descent constraint per layer, residual "
             f"`{me.residual}`, form `{me.form}`, eps = {me.eps:g}, primal-dual training; noise between layers "
             f"during training ({me.noise}, sigma = {me.noise_sigma:g}).",
             "- standard: loss on the last layer only, no noise.",
             "- standard + noise: loss on the last layer only, the same training noise.",
             f"- Training: {tc.epochs} epochs, batch {tc.batch_size}, {tc.optimizer} lr {tc.lr:g}, dual lr "
             f"{tc.lr_dual:g} (step every {tc.dual_every}); the weights with the best noise-free validation "
             "loss are kept.",
             "- Metrics (test set): NMSE = 10 log10(sum ||y_l - y*||^2 / sum ||y*||^2) over the test set; "
             "descending frequency of layer l = fraction of samples with ||y_l - y*|| < ||y_(l-1) - y*||.",
             f"- Perturbation sweep: y_0 ~ N(0, sigma^2 I) and noise sigma * log||grad g|| * N(0, I) after "
             f"every layer but the last, both in the reference domain of scale {ev.domain_scale:g} (the research "
             "code's x100 domain) for every network.",
             "- OOD shift: x~ = x + p N(0, I)" + (f" clipped to [{ev.ood_clip[0]:g}, {ev.ood_clip[1]:g}]"
                                                  if ev.ood_clip else " (not clipped: these signals are not in "
                                                                       "[0, 1])")
             + ", scored against the optimum y~* of the shifted signals.", ""]
    lines = _report_head(f"LISTA reproduction: preset `{preset.name}`", command, results) + setup \
        + _report_claims(results["claims"], _reading(preset, results))
    lines += ["## Per layer, clean test set", "",
              layers_table({lab[k]: models[k]["clean"] for k in names} | {k: v for k, v in base.items()}), "",
              "![per-layer distance and NMSE](plots/layers.png)", "",
              "![descending frequency](plots/descending.png)", ""]
    rows = []
    for k in names + list(base):
        m = models[k]["clean"] if k in models else base[k]
        t = models[k]["train"] if k in models else None
        rows.append([lab.get(k, k), _f(m["nmse_db"][-1]),
                     f"{_f(m['distance_mean'][-1], 3)} ± {_f(m['distance_std'][-1], 3)}",
                     _f(m["objective_gap"][-1], 4), _f(m["l1_mean"][-1]), _f(m["l1_star"]),
                     "-" if t is None else str(t["best_epoch"]),
                     "-" if t is None else f"{t['seconds']:.0f}"])
    lines += ["## Final layer, clean test set", "",
              _table(["network", "NMSE (dB)", "||y_L - y*|| mean ± std", "f(y_L) - f(y*)", "||y_L||_1",
                      "||y*||_1", "best epoch", "train s"], rows), ""]
    match = results.get("iterations_to_match")
    if match:
        L = preset.model.num_layers

        def its(k):
            return f"> {match['max_iter']}" if k is None else str(k)

        lines += ["## The learned-optimizer view", "",
                  f"How many iterations of ISTA and FISTA (step 1/Lip, from y_0 = 0, float64) reach each trained "
                  f"L = {L} network's final-layer NMSE on the test set:", "",
                  _table(["network", "final NMSE (dB)", "ISTA iterations", "FISTA iterations", "FISTA / L"],
                         [[lab[k], _f(models[k]["clean"]["nmse_db"][-1]), its(match["ista"][k]),
                           its(match["fista"][k]),
                           "-" if match["fista"][k] is None else _f(match["fista"][k] / L, 1)] for k in names]),
                  ""]
    sw = {k: models[k]["robustness"]["sweep"] for k in names}
    sigmas = sw[names[0]]["sigma"]
    rows, rows_d = [], []
    for i, sg in enumerate(sigmas):
        rows.append([f"{sg:g}"] + [_f(sw[k]["final_distance_mean"][i]) for k in names]
                    + [_f(sw[k]["final_l1_mean"][i]) for k in names])
        rows_d.append([f"{sg:g}"] + [_f(min(sw[k]["descending"][i])) for k in names]
                      + [_f(min(sw[k]["layer_descending"][i])) for k in names])
    lines += ["## Perturbation sweep", "",
              _table(["sigma"] + [f"mean ||y_L - y*|| {lab[k]}" for k in names]
                     + [f"mean ||y_L||_1 {lab[k]}" for k in names], rows), "",
              _table(["sigma"] + [f"min desc. {lab[k]}" for k in names]
                     + [f"min layer desc. {lab[k]}" for k in names], rows_d), "",
              "min desc. = the lowest per-layer descending frequency of the perturbed trajectory (layer l's "
              "output after its noise against layer l-1's: what the constraints bound). min layer desc. = the "
              "lowest per-layer fraction of samples whose layer output (before the noise) is closer to y* than "
              "the layer's perturbed input.",              "", "![perturbation sweep](plots/sweep.png)", ""]
    un = {lab[k]: models[k]["robustness"]["under_noise"] for k in names}
    rows = []
    for l in range(preset.model.num_layers):
        rows.append([str(l + 1)] + [_f(un[lab[k]]["descending"][l]) for k in names]
                    + [_f(un[lab[k]]["layer_descending"][l]) for k in names]
                    + [_f(un[lab[k]]["nmse_db"][l + 1]) for k in names])
    lines += [f"## Descending frequency per layer under noise (sigma = {ev.perturb_sigma:g})", "",
              _table(["layer"] + [f"desc. {lab[k]}" for k in names] + [f"layer desc. {lab[k]}" for k in names]
                     + [f"NMSE dB {lab[k]}" for k in names], rows), "",
              "desc. and layer desc. as in the sweep table; NMSE of the perturbed iterates.", "",
              "![descending frequency under noise](plots/descending_noise.png)", ""]
    od = {k: models[k]["robustness"]["ood"] for k in names}
    rows = []
    for i, p in enumerate(od[names[0]]["p"]):
        rows.append([f"{p:g}"] + [_f(od[k]["final_nmse_db"][i]) for k in names]
                    + [_f(od[k]["final_nmse_db"][i] - models[k]["clean"]["nmse_db"][-1]) for k in names]
                    + [_f(od[k]["final_nmse_db_old"][i]) for k in names])
    lines += ["## OOD shift", "",
              _table(["p"] + [f"NMSE vs y~* {lab[k]}" for k in names]
                     + [f"change vs clean {lab[k]}" for k in names]
                     + [f"NMSE vs old y* {lab[k]}" for k in names], rows), "",
              "NMSE in dB. The last columns use the clean optimum, as the research plot did; it mixes the "
              "network's error with the change of the optimum itself.", "", "![OOD shift](plots/ood.png)", ""]
    c = models.get("constrained", {}).get("train", {})
    if c.get("multipliers") is not None:
        lines += ["## Training", "",
                  "Multipliers of the constrained network (layer 1..L) at the end: "
                  + ", ".join(_f(v, 3) for v in c["multipliers"]) + "; largest during training: "
                  + ", ".join(_f(v, 3) for v in c["max_multipliers"]) + ".", "",
                  "![validation loss](plots/val_loss.png)", ""]
    lines += _report_tail(timing, "Checkpoints and the cached OOD optima stay in `checkpoints/` and `cache/` "
                                  "(ignored by git); `--resume` reuses them.")
    atomic_write_text("\n".join(lines), os.path.join(out, "report.md"))


def _reading(preset, results):
    """Plain-language paragraphs drawn from the numbers (rules, not hand-written)."""
    models, claims = results["models"], {r["claim"]: r for r in results["claims"]}
    verdict = {k.split(" (")[0]: v["verdict"] for k, v in claims.items()}
    out = []
    c, s, n = models["constrained"], models["standard"], models["noisy"]
    nu_end, nu_max = c["train"]["multipliers"], c["train"]["max_multipliers"]
    if max(nu_max) == 0:
        out.append("The descent constraints never became active (every multiplier stayed at 0): every layer "
                   "already descended by the required factor, so the constrained network trained exactly like "
                   "standard + noise.")
    elif max(nu_end) == 0:
        l = max(range(len(nu_max)), key=nu_max.__getitem__)
        out.append(f"The descent constraints were active only early in training (largest multiplier "
                   f"{_f(nu_max[l], 3)}, layer {l + 1}) and all multipliers were back at 0 at the end: the "
                   "trained network satisfies every constraint without help, so it differs little from "
                   "standard + noise.")
    else:
        active = [str(i + 1) for i, v in enumerate(nu_end) if v > 0]
        out.append(f"The descent constraints were still active at the end of training on layer(s) "
                   f"{', '.join(active)}.")
    ds = min(s["clean"]["descending"])
    if ds >= NEAR_ONE:
        init = preset.model.init
        why = (" With the `ista` initialisation the untrained network is L ISTA steps, which descend at every "
               "layer, and standard training kept that property here; the paper's contrast comes from networks "
               "whose intermediate layers are free to wander (e.g. the random `paper` initialisation, "
               "`--preset paper`).") if init == "ista" else ""
        out.append(f"Standard LISTA also descends at every layer on clean data (lowest descending frequency "
                   f"{_f(ds)}), so the claimed contrast does not show in this run.{why}")
    rob_std = [verdict.get(f"constrained degrades less than standard under the {w}") for w in
               ("perturbation sweep", "OOD shift")]
    rob_noisy = [verdict.get(f"constrained degrades less than standard + noise under the {w}") for w in
                 ("perturbation sweep", "OOD shift")]
    if any(v in ("holds", "partly holds") for v in rob_std) and all(v == "does not hold" for v in rob_noisy):
        out.append("Constrained LISTA is more robust than standard LISTA, but standard LISTA trained with the "
                   "same noise is as robust (ties within the stated tolerances): in this run the robustness comes "
                   "from the training noise, not from the constraints.")
    fc, fs, fn = (x["clean"]["nmse_db"][-1] for x in (c, s, n))
    out.append(f"Clean final-layer NMSE: constrained {_f(fc)} dB, standard {_f(fs)} dB, standard + noise {_f(fn)} dB "
               f"(ISTA with the same number of steps: {_f(results['baselines']['ISTA']['nmse_db'][-1])} dB, FISTA "
               f"{_f(results['baselines']['FISTA']['nmse_db'][-1])} dB).")
    return out


def _json_safe(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


# ---------------------------------------------------------------- commands

def _preset_type(get_preset):
    """The argparse ``type`` of ``--preset``: a name through ``get_preset`` (ValueError: usage error)."""
    def preset(name):
        try:
            return get_preset(name)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    return preset


_preset_arg = _preset_type(P.get_preset)


def _apply_overrides(preset, args):
    if getattr(args, "epochs", None) is not None:
        if args.epochs < 0:
            raise CLIError(f"--epochs: expected an integer >= 0, got {args.epochs}")
        preset.train = dataclasses.replace(preset.train, epochs=args.epochs)
    return preset


def _device(name):
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise CLIError(f"--device: expected a torch device such as 'cpu' or 'cuda', got {name!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise CLIError(f"--device: {name!r} requested but no CUDA device is visible")
    return str(dev)


def cmd_train(args):
    preset = _apply_overrides(args.preset, args)
    device = _device(args.device)
    variant = MODES[args.mode]
    os.makedirs(args.out, exist_ok=True)
    data = prepare_data(preset.data, args.data_cache, progress=not args.quiet)
    _, summary, _ = train_variant(preset, variant, _move(data, device), args.out, seed=args.seed, device=device,
                                  resume=args.resume, progress=not args.quiet)
    print(f"trained {LABELS[variant]} LISTA ({preset.name}): best epoch {summary['best_epoch']}, validation loss "
          f"{_f(summary['best_val_loss'], 4)}; checkpoints in {args.out}")
    return 0


def _move(data, device):
    if device == "cpu":
        return data
    return dataclasses.replace(data, D=data.D.to(device), train=_to(data.train, device), val=_to(data.val, device),
                               test=_to(data.test, device))


def _load_for_eval(args):
    device = _device(args.device)
    model, preset, variant = load_model(args.checkpoint, args.preset, device)
    data = prepare_data(preset.data, args.data_cache, progress=not args.quiet)
    _check_same_dictionary(model, data, args.checkpoint)
    return model, preset, variant, _move(data, device), device


def cmd_eval(args):
    model, preset, variant, data, _ = _load_for_eval(args)
    clean = evaluate_clean(model, data.test, preset.evaluation, args.seed)
    print(f"{LABELS.get(variant, variant)} LISTA ({preset.name}), {clean['count']} test samples")
    print(layers_table({"": clean}, escape=False))
    print(f"final: NMSE {_f(clean['nmse_db'][-1])} dB, ||y_L - y*|| {_f(clean['distance_mean'][-1], 4)}, "
          f"||y_L||_1 {_f(clean['l1_mean'][-1])} (||y*||_1 {_f(clean['l1_star'])})")
    if args.out:
        from .evaluate import plots

        atomic_write_json(_json_safe({"checkpoint": args.checkpoint, "variant": variant, "preset": preset.name,
                                      "clean": clean}), os.path.join(args.out, "eval.json"))
        plots.plot_layers({variant: clean}, os.path.join(args.out, "layers.png"))
        plots.plot_descending({variant: clean}, os.path.join(args.out, "descending.png"))
        print(f"wrote {args.out}/eval.json, layers.png, descending.png")
    return 0


def cmd_robustness(args):
    model, preset, variant, data, _ = _load_for_eval(args)
    ev = preset.evaluation
    sets = ood_sets(data, preset.data, ev, args.seed, progress=not args.quiet)
    rob = evaluate_robustness(model, data.test, sets, ev, preset.method.noise_negative, args.seed,
                              progress=not args.quiet)
    sw, od = rob["sweep"], rob["ood"]
    print(f"{LABELS.get(variant, variant)} LISTA ({preset.name}): perturbation sweep")
    print(_table(["sigma", "final ||y_L - y*||", "||y_L||_1", "min desc. freq."],
                 [[f"{s:g}", _f(d), _f(l1), _f(min(de))] for s, d, l1, de in
                  zip(sw["sigma"], sw["final_distance_mean"], sw["final_l1_mean"], sw["descending"])], escape=False))
    print("OOD shift")
    print(_table(["p", "NMSE vs new y~* (dB)", "NMSE vs old y* (dB)"],
                 [[f"{p:g}", _f(a), _f(b)] for p, a, b in zip(od["p"], od["final_nmse_db"], od["final_nmse_db_old"])],
                 escape=False))
    if args.out:
        from .evaluate import plots

        atomic_write_json(_json_safe({"checkpoint": args.checkpoint, "variant": variant, "preset": preset.name,
                                      **rob}), os.path.join(args.out, "robustness.json"))
        plots.plot_sweep({variant: sw}, os.path.join(args.out, "sweep.png"))
        plots.plot_ood({variant: od}, os.path.join(args.out, "ood.png"))
        plots.plot_descending({variant: rob["under_noise"]}, os.path.join(args.out, "descending_noise.png"),
                              title=f"descending frequency under noise (sigma = {ev.perturb_sigma:g})")
        print(f"wrote {args.out}/robustness.json, sweep.png, ood.png, descending_noise.png")
    return 0


GITIGNORE = "# written by `sdu-ext reproduce`: large and machine-specific\ncheckpoints/\ncache/\n"


def _start_report(kind, args):
    """``(preset, device, out)`` of ``sdu-ext reproduce <kind>``; the report folder ``out``
    is made with its ``.gitignore`` and ``config.json``."""
    preset = _apply_overrides(args.preset, args)
    device = _device(args.device)
    out = args.out or os.path.join("results", f"{kind}_{preset.name}")
    os.makedirs(out, exist_ok=True)
    atomic_write_text(GITIGNORE, os.path.join(out, ".gitignore"))
    atomic_write_json(preset.to_dict(), os.path.join(out, "config.json"))
    return preset, device, out


def _copy_logs(run_dir, log_dir):
    """Copy a training run's ``history.{csv,json}`` from ``run_dir`` into the report's ``log_dir``."""
    for name in ("history.csv", "history.json"):
        with open(os.path.join(run_dir, name), "rb") as f:
            atomic_write_text(f.read().decode("utf-8"), os.path.join(log_dir, name))


def _report_command(kind, preset, args, out):
    """The command line a report states: ``sdu-ext reproduce <kind>`` with the options that change it."""
    return f"sdu-ext reproduce {kind} --preset {preset.name}" + (f" --seed {args.seed}" if args.seed else "") \
        + (f" --epochs {args.epochs}" if args.epochs is not None else "") \
        + (f" --threads {args.threads}" if args.threads is not None else "") + f" --out {out}"


def _finish_report(out, results):
    """Write ``metrics.json`` (after ``report.md``) and print where the report is and its verdicts."""
    atomic_write_json(_json_safe(results), os.path.join(out, "metrics.json"))
    print(f"report: {os.path.join(out, 'report.md')} ({results['timing']['total_seconds']:.0f} s)")
    for r in results["claims"]:
        print(f"  [{r['verdict']}] {r['claim']}: {r['evidence']}")
    return 0


def cmd_reproduce(args):
    from .evaluate import plots
    from .models import FISTA, ISTA
    from .problems import Lasso

    t_start = time.perf_counter()
    preset, device, out = _start_report("lista", args)
    progress = not args.quiet
    timing = {}

    t0 = time.perf_counter()
    data = prepare_data(preset.data, args.data_cache, progress=progress)
    timing["data_seconds"] = time.perf_counter() - t0
    data_dev = _move(data, device)

    trained, histories = {}, {}
    resumed = False
    for variant in VARIANTS:
        run_dir = os.path.join(out, "checkpoints", variant)
        resumed |= args.resume and os.path.isfile(os.path.join(run_dir, "last.pt"))
        t0 = time.perf_counter()
        model, summary, history = train_variant(preset, variant, data_dev, run_dir, seed=args.seed, device=device,
                                                resume=args.resume, progress=progress)
        timing[f"train_{variant}_seconds"] = time.perf_counter() - t0
        trained[variant] = (model, summary)
        histories[LABELS[variant]] = history
        _copy_logs(run_dir, os.path.join(out, "runs", variant))

    t0 = time.perf_counter()
    ev = preset.evaluation
    sets = ood_sets(data_dev, preset.data, ev, args.seed, os.path.join(out, "cache", "ood.pt"), progress=progress)
    timing["ood_optima_seconds"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    models = {}
    for variant, (model, summary) in tqdm(trained.items(), desc="evaluate", disable=not progress, leave=False):
        models[variant] = {"train": summary,
                           "clean": evaluate_clean(model, data_dev.test, ev, args.seed),
                           "robustness": evaluate_robustness(model, data_dev.test, sets, ev,
                                                             preset.method.noise_negative, args.seed)}
    L = preset.model.num_layers
    D = data_dev.D
    baselines = {"ISTA": M.evaluate_model(ISTA(D, data.alpha, L), *data_dev.test, batch_size=ev.batch_size),
                 "FISTA": M.evaluate_model(FISTA(D, data.alpha, L), *data_dev.test, batch_size=ev.batch_size)}
    timing["evaluate_seconds"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    targets = [models[k]["clean"]["nmse_db"][-1] for k in models]
    matching = {"max_iter": MATCH_MAX_ITER}
    problem = Lasso(data_dev.D, data.alpha)
    for method in ("ista", "fista"):
        its = M.iterations_to_match(problem, *data_dev.test, targets, method=method,
                                    max_iter=MATCH_MAX_ITER)
        matching[method] = dict(zip(models, its))
    timing["learned_optimizer_seconds"] = time.perf_counter() - t0

    claim_input = {k: {"clean": v["clean"], **v["robustness"]} for k, v in models.items()}
    claims = assess_claims(claim_input)

    t0 = time.perf_counter()
    pdir = os.path.join(out, "plots")
    clean = {LABELS[k]: v["clean"] for k, v in models.items()}
    plots.plot_layers(clean | baselines, os.path.join(pdir, "layers.png"))
    plots.plot_descending(clean | baselines, os.path.join(pdir, "descending.png"))
    plots.plot_descending({LABELS[k]: v["robustness"]["under_noise"] for k, v in models.items()},
                          os.path.join(pdir, "descending_noise.png"),
                          title=f"descending frequency under noise (sigma = {ev.perturb_sigma:g})")
    plots.plot_sweep({LABELS[k]: v["robustness"]["sweep"] for k, v in models.items()},
                     os.path.join(pdir, "sweep.png"))
    plots.plot_ood({LABELS[k]: v["robustness"]["ood"] for k, v in models.items()}, os.path.join(pdir, "ood.png"))
    plots.plot_history(histories, os.path.join(pdir, "val_loss.png"))
    timing["plots_seconds"] = time.perf_counter() - t0
    timing["total_seconds"] = time.perf_counter() - t_start
    timing["resumed"] = bool(resumed)

    info = {k: v for k, v in data.info.items() if k != "config_key"}
    results = {"format": CLI_FORMAT, "preset": preset.to_dict(), "seed": args.seed, "machine": _machine(),
               "data": {"train": int(data.train[0].shape[0]), "val": int(data.val[0].shape[0]),
                        "test": int(data.test[0].shape[0]), "info": info},
               "timing": timing, "claims": claims, "models": models, "baselines": baselines,
               "iterations_to_match": matching}
    write_report(out, preset, data, results, _report_command("lista", preset, args, out))
    return _finish_report(out, results)


# ---------------------------------------------------------------- parser

def _common(p, seeds, checkpoint=None):
    """The options of every command; ``seeds`` says what ``--seed`` seeds. An evaluation command
    passes ``checkpoint=(kind, preset_type, out_help)``: its ``--checkpoint`` (written by
    ``sdu-ext <kind> train``), ``--preset`` and ``--out``."""
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    p.add_argument("--seed", type=int, default=0,
                   help=f"seeds {seeds} (default: 0); the data set is fixed by the preset")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's choice; 1 avoids slowdowns on a busy machine)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    if checkpoint is not None:
        kind, preset_type, out_help = checkpoint
        p.add_argument("--checkpoint", required=True,
                       help=f"a best.pt/last.pt written by `sdu-ext {kind} train`, or its directory")
        p.add_argument("--preset", type=preset_type, default=None,
                       help="preset the checkpoint was trained with (default: the one stored in it)")
        p.add_argument("--out", default=None, help=out_help)
    p.add_argument("--data-cache", default=None, metavar="DIR",
                   help="data set cache directory (default: $SDU_EXT_CACHE or ~/.cache/sdu_ext)")


def _usage(parser):
    """A command that only prints ``parser``'s usage (a command group without a sub-command)."""
    def run(args):
        parser.print_usage(sys.stderr)
        print(f"{parser.prog}: error: choose a command (see --help)", file=sys.stderr)
        return 2
    return run


def build_parser():
    """The argparse parser of ``sdu-ext``."""
    parser = argparse.ArgumentParser(
        prog="sdu-ext", description="Robust stochastically-descending unrolled networks: train, evaluate and "
                                    "reproduce constrained LISTA (sparse coding) and GLOW-Prox (image "
                                    "inpainting).")
    parser.set_defaults(run=_usage(parser))
    sub = parser.add_subparsers(dest="command", metavar="{lista,reproduce}")
    presets = ", ".join(P.PRESETS)
    seeds = "the initial weights, training and evaluation draws"
    evaluates = ("lista", _preset_arg, "write JSON and plots to this directory")

    lista = sub.add_parser("lista", help="train or evaluate one LISTA network")
    lista.set_defaults(run=_usage(lista))
    lsub = lista.add_subparsers(dest="action", metavar="{train,eval,robustness}")
    p = lsub.add_parser("train", help="train one LISTA network (resumable)")
    p.add_argument("--preset", type=_preset_arg, default=P.get_preset("quick"), help=f"one of {presets}")
    p.add_argument("--mode", choices=sorted(MODES), default="constrained",
                   help="constrained (descent constraints + noise), standard (= unconstrained) or noisy "
                        "(standard trained with noise)")
    p.add_argument("--out", required=True, help="run directory: checkpoints and logs")
    p.add_argument("--epochs", type=int, default=None, help="override the preset's number of epochs")
    p.add_argument("--resume", action="store_true", help="continue from --out's last.pt")
    _common(p, seeds)
    p.set_defaults(run=cmd_train)
    p = lsub.add_parser("eval", help="per-layer metrics of a checkpoint on the clean test set")
    _common(p, seeds, evaluates)
    p.set_defaults(run=cmd_eval)
    p = lsub.add_parser("robustness", help="perturbation sweep and OOD shift of a checkpoint")
    _common(p, seeds, evaluates)
    p.set_defaults(run=cmd_robustness)

    rep = sub.add_parser("reproduce", help="train, evaluate and report the paper's comparison")
    rep.set_defaults(run=_usage(rep))
    rsub = rep.add_subparsers(dest="what", metavar="{lista}")
    p = rsub.add_parser("lista", help="constrained vs standard vs standard-with-noise LISTA")
    p.add_argument("--preset", type=_preset_arg, default=P.get_preset("quick"), help=f"one of {presets}")
    p.add_argument("--out", default=None, help="report directory (default: results/lista_<preset>)")
    p.add_argument("--epochs", type=int, default=None, help="override the preset's number of epochs")
    p.add_argument("--resume", action="store_true",
                   help="continue killed training runs in --out and reuse finished ones")
    _common(p, seeds)
    p.set_defaults(run=cmd_reproduce)
    from .cli_inpaint import add_parsers
    add_parsers(sub, rsub)
    return parser


def main(argv=None):
    """Run ``sdu-ext`` with ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if getattr(args, "threads", None) is not None:
            if args.threads < 1:
                raise CLIError(f"--threads: expected an integer >= 1, got {args.threads}")
            torch.set_num_threads(args.threads)
        return args.run(args)
    except CLIError as e:
        print(f"sdu-ext: error: {e}", file=sys.stderr)
        return 2
    except NonFiniteError as e:
        print(f"sdu-ext: training failed: {e}", file=sys.stderr)
        return 1
