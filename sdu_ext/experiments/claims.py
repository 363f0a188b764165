"""The paper's claims decided from seeds, and the plain-language reading of a report.

Every verdict comes from :mod:`sdu_ext.experiments.verdicts` (one value per seed on each
side; "holds" only when the difference exceeds the seed spread, "inconclusive" within it
or with fewer than 2 seeds). The claims are dicts ``{"id", "verdict", "evidence"}`` with
the ids of issue 11 (:data:`~sdu_ext.experiments.verdicts.LISTA_CLAIMS`,
:data:`~sdu_ext.experiments.verdicts.INPAINT_CLAIMS`); the evidence states the absolute
and the relative measure side by side, the levels used and the rule.

Inputs: ``runs`` maps a variant name (:data:`sdu_ext.presets.VARIANTS`) to a list with one
evaluation dict per seed:

- LISTA: ``{"clean": layer metrics, "sweep", "under_noise", "ood"}``
  (:func:`~sdu_ext.experiments.lista.evaluate_clean`, :func:`~sdu_ext.experiments.lista.evaluate_robustness`);
- GLOW-Prox: ``{"clean", "under_noise", "sweep"}`` (:func:`~sdu_ext.experiments.inpaint.evaluate_model`).

Sweep and OOD claims are decided only at the informative levels: for LISTA those where
some network's mean final NMSE is below 0 dB (the zero code y = 0 has NMSE 0 dB at every
level: elsewhere every network is farther from y* than y = 0); for GLOW-Prox the levels
p > 0 where some network's mean final PSNR is above the masked perturbed input's (doing
nothing). :func:`~sdu_ext.experiments.verdicts.sweep_verdict` aggregates the levels.
"""
from typing import Any, Callable, Dict, List, Optional

from . import verdicts
from .report import fmt, label

__all__ = ["NEAR_ONE", "CLOSE_DB", "TIE_DB", "per_seed", "assess_lista_claims", "lista_reading",
           "assess_inpaint_claims", "inpaint_reading", "descent_stat", "inpaint_descent_stat",
           "inpaint_ratio_excess"]

NEAR_ONE = 0.95   # "descends at every layer": lowest descending frequency >= this
CLOSE_DB = 1.0    # "loses little accuracy": final NMSE / PSNR at most this many dB worse
TIE_DB = 0.0      # tie tolerance of the dB comparisons (the seed spread does the work)
CONSTRAINED = ("constrained", "constrained_nonoise")


def per_seed(runs: Dict[str, List[dict]], variant: str, fn: Callable[[dict], float]) -> List[float]:
    """``[fn(evaluation) for each seed]`` of ``variant``; KeyError naming it when it is missing."""
    if variant not in runs:
        raise KeyError(f"runs: no variant {variant!r} (have {', '.join(runs)})")
    return [float(fn(r)) for r in runs[variant]]


def _s(values, digits=2, unit=""):
    return verdicts.fmt(verdicts.summarize(values), digits, unit)


def _present(runs, names):
    return [n for n in names if n in runs]


# ---------------------------------------------------------------- LISTA

def descent_stat(clean: dict, layers: Optional[int] = None) -> float:
    """The lowest descending frequency over layers 1..L (over 1..``layers`` when given)."""
    d = clean["descending"]
    return min(d if layers is None else d[:layers])


def _sweep_claim(claim_id, runs, other, levels, key, level_name, clean_nmse, ids, note):
    """Robustness claim "constrained degrades less than ``other``" over the informative
    ``levels`` (indices) of ``runs[v][key]`` (the sweep or OOD dicts): per level the rise of
    the final NMSE over the network's clean final NMSE (relative, decides) and the final NMSE
    itself (absolute), both lower-is-better, compared over seeds."""
    all_levels = runs["constrained"][0][key][level_name]
    nets = {v: [r[key]["final_nmse_db"] for r in rs] for v, rs in runs.items()}
    kept = verdicts.informative_levels(list(range(len(all_levels))),
                                {v: [[seed[i] for seed in per] for i in range(len(all_levels))]
                                 for v, per in nets.items()},
                                [0.0] * len(all_levels)) if levels is None else levels
    dropped = [f"{all_levels[i]:g}" for i in range(len(all_levels)) if i not in kept]
    per_level, parts = {}, []
    for i in kept:
        rise = [per_seed(runs, v, lambda r: r[key]["final_nmse_db"][i] - clean_nmse(r)) for v in ("constrained", other)]
        absolute = [per_seed(runs, v, lambda r: r[key]["final_nmse_db"][i]) for v in ("constrained", other)]
        rel, ab = verdicts.compare(*rise, tol=TIE_DB), verdicts.compare(*absolute, tol=TIE_DB)
        per_level[all_levels[i]] = rel["verdict"]
        parts.append(f"{level_name} {all_levels[i]:g}: rise of the final NMSE {verdicts.fmt(rel['mine'])} dB vs "
                     f"{verdicts.fmt(rel['other'])} dB ({rel['verdict']}); final NMSE {verdicts.fmt(ab['mine'])} dB vs "
                     f"{verdicts.fmt(ab['other'])} dB ({ab['verdict']})")
    head = (f"constrained + noise vs {label(other)}, decided on the rise of the final NMSE over each network's "
            f"clean final NMSE (relative; the final NMSE itself, absolute, beside it) at the informative levels "
            f"(some network beats the zero code y = 0, NMSE 0 dB): "
            + (", ".join(f"{all_levels[i]:g}" for i in kept) if kept else "none"))
    if dropped:
        head += f"; left out ({level_name} where every network is farther from y* than y = 0): {', '.join(dropped)}"
    return _levels_claim(claim_id, per_level, [head] + parts + ([note] if note else []), ids)


def _levels_claim(claim_id, per_level, parts, ids):
    """The claim aggregating the per-level verdicts ``per_level`` (:func:`verdicts.sweep_verdict`),
    its evidence ``parts`` followed by the rule."""
    tail = (f"aggregate: holds at >= half of the levels and fails at none -> holds (and conversely); "
            f"per level: {verdicts.compare([0.0, 1.0], [0.0, 1.0])['rule']}")
    return verdicts.claim(claim_id, verdicts.sweep_verdict(per_level), "; ".join(parts + [tail]), ids=ids)


def assess_lista_claims(runs: Dict[str, List[dict]]) -> List[Dict[str, str]]:
    """The LISTA claims of issue 11 on per-seed evaluations ``runs`` (module docstring);
    needs the variants ``constrained``, ``standard`` and ``noisy`` (``constrained_nonoise``,
    the ablation, is reported beside them when present)."""
    ids = verdicts.LISTA_CLAIMS
    L = len(runs["constrained"][0]["clean"]["descending"])
    out = []
    cons = _present(runs, CONSTRAINED)
    stats = {v: per_seed(runs, v, lambda r: descent_stat(r["clean"])) for v in runs}
    inner = {v: per_seed(runs, v, lambda r: descent_stat(r["clean"], L - 1)) for v in cons}
    t = verdicts.threshold(stats["constrained"], NEAR_ONE)
    ev = [f"lowest descending frequency over layers 1..{L} (clean test set): "
          + ", ".join(f"{label(v)} {_s(stats[v])}" for v in cons)
          + f"; over layers 1..{L - 1}: " + ", ".join(f"{label(v)} {_s(inner[v])}" for v in cons)]
    if "constrained_nonoise" in runs:
        ev.append(f"ablation (no noise): {verdicts.threshold(stats['constrained_nonoise'], NEAR_ONE)['verdict']}")
    ev.append(f"decided for constrained + noise; rule: {t['rule']}")
    out.append(verdicts.claim("constrained_descends", t["verdict"], "; ".join(ev), ids=ids))

    t = verdicts.threshold(stats["standard"], NEAR_ONE, above=False)
    out.append(verdicts.claim("standard_does_not_descend", t["verdict"],
                       f"lowest descending frequency over layers 1..{L}: standard {_s(stats['standard'])}, "
                       f"standard + noise {_s(stats['noisy'])}; decided for standard; rule: {t['rule']}", ids=ids))

    def clean_nmse(r):
        return r["clean"]["nmse_db"][-1]

    for other, suffix in (("standard", "standard"), ("noisy", "noise")):
        note = ""
        if "constrained_nonoise" in runs and other == "noisy":
            abl = _sweep_claim("robust_perturbation_vs_standard", {k: runs[k] for k in runs}
                               | {"constrained": runs["constrained_nonoise"]}, "standard", None, "sweep", "sigma",
                               clean_nmse, ids, "")
            note = f"ablation: constrained (no noise) vs standard under the sweep: {abl['verdict']}"
        out.append(_sweep_claim(f"robust_perturbation_vs_{suffix}", runs, other, None, "sweep", "sigma", clean_nmse,
                                ids, note))
    for other, suffix in (("standard", "standard"), ("noisy", "noise")):
        out.append(_sweep_claim(f"robust_ood_vs_{suffix}", runs, other, None, "ood", "p", clean_nmse, ids, ""))

    fin = {v: per_seed(runs, v, clean_nmse) for v in runs}
    nw = verdicts.not_worse(fin["constrained"], fin["standard"], CLOSE_DB)
    out.append(verdicts.claim("accuracy_cost", nw["verdict"],
                       "final-layer NMSE on the clean test set (dB; lower is better): "
                       + ", ".join(f"{label(v)} {_s(fin[v])}" for v in runs)
                       + f"; constrained + noise {_loss_words(nw['loss'])} against standard (\"little\": at most "
                         f"{CLOSE_DB:g} dB); rule: {nw['rule']}", ids=ids))
    return out


def _loss_words(loss) -> str:
    """``loss`` (dB lost against standard, mean over seeds; negative: a gain) in words."""
    if loss is None or loss != loss:
        return "loses an undetermined amount"
    return f"loses {fmt(loss)} dB" if loss >= 0 else f"gains {fmt(-loss)} dB (a negative cost)"


def _by_id(claims):
    return {c["id"]: c["verdict"] for c in claims}


def _mean(values):
    return verdicts.summarize(values)["mean"]


def lista_reading(preset, results: Dict[str, Any]) -> List[str]:
    """Plain-language paragraphs of a LISTA report drawn from its numbers (rules, not hand-written)."""
    runs, verdict = results["per_seed"], _by_id(results["claims"])
    compact = results["runs"]
    n = len(results["seeds"])
    out = [f"Every number below is the mean ± standard deviation over {n} seed{'s' if n != 1 else ''} "
           f"({', '.join(map(str, results['seeds']))}); a claim holds only when the difference exceeds the seed "
           "spread (see the rule in each row)."]
    for v in _present(runs, CONSTRAINED):
        nu = [r["final_multipliers"] for r in compact[v]]
        L = len(nu[0])
        means = [_mean([s[l] for s in nu]) for l in range(L)]
        active = [str(l + 1) for l, m in enumerate(means) if m > 0]
        if active:
            out.append(f"{label(v)}: the descent constraints are still active at the end of training on layer(s) "
                       f"{', '.join(active)} (mean multipliers {', '.join(fmt(m, 3) for m in means)}).")
        else:
            out.append(f"{label(v)}: every multiplier is 0 at the end of training: the trained network satisfies "
                       "its constraints without help (they were active during training if the largest multipliers "
                       "in the Training section are above 0).")
    ds = per_seed(runs, "standard", lambda r: descent_stat(r["clean"]))
    if verdict["standard_does_not_descend"] == verdicts.HOLDS:
        out.append(f"Standard LISTA does not descend at every layer (lowest descending frequency {_s(ds)}): its "
                   "intermediate layers are free to move away from y*, which is the contrast the paper is about.")
    elif _mean(ds) >= NEAR_ONE:
        out.append(f"Standard LISTA also descends at every layer (lowest descending frequency {_s(ds)}), so the "
                   "claimed contrast does not show in this run.")
    rs = [verdict[f"robust_{w}_vs_standard"] for w in ("perturbation", "ood")]
    rn = [verdict[f"robust_{w}_vs_noise"] for w in ("perturbation", "ood")]
    if verdicts.HOLDS in rs and all(v != verdicts.HOLDS for v in rn):
        out.append("Constrained LISTA degrades less than standard LISTA, but not less than standard LISTA trained "
                   "with the same noise: that part of the robustness cannot be credited to the constraints.")
    elif verdicts.HOLDS in rn:
        out.append("Constrained LISTA degrades less than standard LISTA trained with the same noise "
                   f"({'perturbation sweep' if rn[0] == verdicts.HOLDS else 'OOD shift'}), so the constraints add "
                   "robustness beyond the noise there.")
    fin = {v: per_seed(runs, v, lambda r: r["clean"]["nmse_db"][-1]) for v in runs}
    base = results["baselines"]
    out.append("Clean final-layer NMSE: " + ", ".join(f"{label(v)} {_s(fin[v])} dB" for v in runs)
               + f"; ISTA with the same number of steps {fmt(base['ISTA']['nmse_db'][-1])} dB, FISTA "
                 f"{fmt(base['FISTA']['nmse_db'][-1])} dB.")
    if verdict["accuracy_cost"] == verdicts.HOLDS and _mean(fin["constrained"]) < _mean(fin["standard"]) - CLOSE_DB:
        out.append("The constrained networks are more accurate than standard LISTA here, not less: every network "
                   "got the same learning rate and schedule (not tuned per network), and the per-layer constraints "
                   "also act as a per-layer training signal, which standard training lacks.")
    return out


# ---------------------------------------------------------------- GLOW-Prox inpainting

def inpaint_descent_stat(clean: dict, first_layer: int, layer_one: bool) -> float:
    """The lowest descending frequency over the constrained residuals: ||grad_x f|| and
    ||grad_z f|| at layers ``first_layer``..L, and the distance ||x_1 - x|| at layer 1 when
    ``layer_one`` (the layer-1 group)."""
    k = first_layer - 1
    v = min(min(clean["desc_x"][k:]), min(clean["desc_z"][k:]))
    return min(v, clean["desc_err"][0]) if layer_one else v


def inpaint_ratio_excess(clean: dict, first_layer: int, eps: float, first_eps: Optional[float]) -> float:
    """The largest ``ratio - (1 - eps)`` over the constraints of the constrained network on
    the test set: the ratio of means of ||grad_x f|| and ||grad_z f|| at layers
    ``first_layer``..L (``ratio_of_means``), and with ``first_eps`` the mean per-image ratio
    ||x_1 - x|| / ||x_0 - x|| (``mean_ratio``, the layer-1 group). <= 0: all satisfied."""
    k = first_layer - 1
    v = max(max(clean["ratio_x"][k:]), max(clean["ratio_z"][k:])) - (1 - eps)
    if first_eps is not None:
        v = max(v, clean["mean_ratio_err"][0] - (1 - first_eps))
    return v


def _inpaint_sweep_claim(claim_id, runs, other, ids):
    sw0 = runs["constrained"][0]["sweep"]
    ps = sw0["p"]
    nets = {v: [[r["sweep"]["psnr"][i] for r in rs] for i in range(len(ps))] for v, rs in runs.items()}
    masked = [_mean([r["sweep"]["psnr_masked"][i] for rs in runs.values() for r in rs]) for i in range(len(ps))]
    # informative: p > 0 and some network's mean final PSNR above the masked input's (higher is better:
    # negate both to reuse "error below the zero code")
    kept = [i for i in verdicts.informative_levels(list(range(len(ps))), {v: [[-x for x in lv] for lv in per]
                                                                    for v, per in nets.items()},
                                            [-m for m in masked]) if ps[i] > 0]
    dropped = [f"{ps[i]:g}" for i in range(len(ps)) if ps[i] > 0 and i not in kept]
    per_level, parts = {}, []
    for i in kept:
        drop = [per_seed(runs, v, lambda r: r["sweep"]["psnr"][0] - r["sweep"]["psnr"][i]) for v in ("constrained",
                                                                                                    other)]
        absolute = [per_seed(runs, v, lambda r: r["sweep"]["psnr"][i]) for v in ("constrained", other)]
        rel = verdicts.compare(*drop, tol=TIE_DB)
        ab = verdicts.compare(*absolute, higher_is_better=True, tol=TIE_DB)
        per_level[ps[i]] = rel["verdict"]
        parts.append(f"p {ps[i]:g}: PSNR drop {verdicts.fmt(rel['mine'])} dB vs {verdicts.fmt(rel['other'])} dB "
                     f"({rel['verdict']}); final PSNR {verdicts.fmt(ab['mine'])} dB vs {verdicts.fmt(ab['other'])} dB "
                     f"({ab['verdict']})")
    head = (f"constrained vs {label(other)}, decided on the drop of the final PSNR from each network's own p = 0 "
            f"value (relative; the final PSNR itself, absolute, beside it) at the informative levels (p > 0 where "
            f"some network's final PSNR is above the masked perturbed input's): "
            + (", ".join(f"{ps[i]:g}" for i in kept) if kept else "none"))
    if dropped:
        head += f"; left out (no network beats the masked input): p {', '.join(dropped)}"
    return _levels_claim(claim_id, per_level, [head] + parts, ids)


def assess_inpaint_claims(runs: Dict[str, List[dict]], first_layer: int, eps: float,
                          first_eps: Optional[float] = None) -> List[Dict[str, str]]:
    """The GLOW-Prox claims of issue 11 on per-seed evaluations ``runs`` (module docstring;
    variants ``constrained``, ``standard``, ``noisy``); ``first_eps``: the eps of the
    layer-1 group (None: no layer-1 group)."""
    ids = verdicts.INPAINT_CLAIMS
    L = len(runs["constrained"][0]["clean"]["desc_x"])
    one = first_eps is not None
    where = (f"||x_l - x|| at layer 1, " if one else "") + f"||grad_x f|| and ||grad_z f|| at layers {first_layer}..{L}"
    trained = [v for v in runs if v != "untrained"]
    stats = {v: per_seed(runs, v, lambda r: inpaint_descent_stat(r["clean"], first_layer, one)) for v in trained}
    out = []
    t = verdicts.threshold(stats["constrained"], NEAR_ONE)
    p1 = {v: per_seed(runs, v, lambda r: r["clean"]["psnr"][1] - r["clean"]["psnr"][0]) for v in trained}
    out.append(verdicts.claim("constrained_descends", t["verdict"],
                       f"lowest descending frequency over the constrained residuals ({where}; clean test set): "
                       + ", ".join(f"{label(v)} {_s(stats[v])}" for v in trained if v in CONSTRAINED)
                       + "; layer 1 changes the PSNR by " + ", ".join(f"{label(v)} {_s(p1[v])} dB" for v in trained)
                       + f"; rule: {t['rule']}", ids=ids))
    t = verdicts.threshold(stats["standard"], NEAR_ONE, above=False)
    out.append(verdicts.claim("standard_does_not_descend", t["verdict"],
                       f"lowest descending frequency over the same residuals: standard {_s(stats['standard'])}, "
                       f"standard + noise {_s(stats['noisy'])}; decided for standard; rule: {t['rule']}", ids=ids))
    ex = {v: per_seed(runs, v, lambda r: inpaint_ratio_excess(r["clean"], first_layer, eps, first_eps))
          for v in ("constrained", "standard")}
    t = verdicts.threshold(ex["constrained"], 0.0, above=False)
    out.append(verdicts.claim("constraints_satisfied", t["verdict"],
                       f"largest ratio minus its bound 1 - eps over the constraints ({where}; ratio of means for "
                       f"grad_x/grad_z, eps = {eps:g}" + (f"; mean per-image ratio at layer 1, eps = {first_eps:g}"
                                                          if one else "")
                       + f"; test set; <= 0 means satisfied): constrained {_s(ex['constrained'], 3)}, standard "
                         f"{_s(ex['standard'], 3)}; rule: {t['rule']}", ids=ids))
    out.append(_inpaint_sweep_claim("robust_perturbation_vs_standard", runs, "standard", ids))
    out.append(_inpaint_sweep_claim("robust_perturbation_vs_noise", runs, "noisy", ids))
    fin = {v: per_seed(runs, v, lambda r: r["clean"]["psnr"][-1]) for v in trained}
    nw = verdicts.not_worse(fin["constrained"], fin["standard"], CLOSE_DB, higher_is_better=True)
    out.append(verdicts.claim("accuracy_cost", nw["verdict"],
                       "final-layer PSNR on the clean test set (dB; higher is better): "
                       + ", ".join(f"{label(v)} {_s(fin[v])}" for v in trained)
                       + f"; constrained {_loss_words(nw['loss'])} against standard (\"little\": at most "
                         f"{CLOSE_DB:g} dB); rule: {nw['rule']}", ids=ids))
    return out


def inpaint_reading(preset, results: Dict[str, Any]) -> List[str]:
    """Plain-language paragraphs of a GLOW-Prox report drawn from its numbers (rules, not hand-written)."""
    runs, verdict, compact = results["per_seed"], _by_id(results["claims"]), results["runs"]
    n = len(results["seeds"])
    out = [f"Every number below is the mean ± standard deviation over {n} seed{'s' if n != 1 else ''} "
           f"({', '.join(map(str, results['seeds']))}); a claim holds only when the difference exceeds the seed "
           "spread (see the rule in each row)."]
    for v in _present(compact, CONSTRAINED):
        groups = compact[v][0]["final_multipliers"]
        means = {g: [_mean([r["final_multipliers"][g][i] for r in compact[v]]) for i in range(len(vals))]
                 for g, vals in groups.items()}
        active = [f"{g} ({', '.join(fmt(m, 3) for m in ms)})" for g, ms in means.items() if any(m > 0 for m in ms)]
        out.append(f"{label(v)}: multipliers at the end of training (mean over seeds): "
                   + ("; ".join(active) + " are active" if active else "all 0") + ".")
    p0 = per_seed(runs, "constrained", lambda r: r["clean"]["psnr"][0])
    p1 = {v: per_seed(runs, v, lambda r: r["clean"]["psnr"][1]) for v in runs if v != "untrained"}
    first = preset.method.first_residual
    lowered = _mean(p1["constrained"]) < _mean(p0)
    out.append(f"Layer 1: masked input {_s(p0)} dB, layer-1 output " + ", ".join(
        f"{label(v)} {_s(p1[v])} dB" for v in p1) + ". "
               + (f"The layer-1 group (residual `{first}`) {'does not keep' if lowered else 'keeps'} the constrained "
                  "network's layer 1 from lowering the PSNR below its input's." if first else
                  "Layer 1 is not constrained in this preset."))
    if verdict["standard_does_not_descend"] != verdicts.HOLDS:
        out.append("Standard GLOW-Prox descends about as consistently as the constrained one on clean data, so the "
                   "claimed contrast does not show in this run: every layer starts from the same pretrained Glow "
                   "and a step that shrinks the top latent, which descends on its own.")
    rs, rn = verdict["robust_perturbation_vs_standard"], verdict["robust_perturbation_vs_noise"]
    if rs == verdicts.HOLDS and rn != verdicts.HOLDS:
        out.append("Constrained GLOW-Prox degrades less than standard GLOW-Prox, but not less than standard "
                   "GLOW-Prox trained with the same noise.")
    elif rs != verdicts.HOLDS:
        out.append(f"The claim that constrained GLOW-Prox degrades less than standard GLOW-Prox under the "
                   f"perturbation sweep is {rs} in this run.")
    fin = {v: per_seed(runs, v, lambda r: r["clean"]["psnr"][-1]) for v in runs}
    out.append("Clean final-layer PSNR: " + ", ".join(f"{label(v)} {_s(fin[v])} dB" for v in runs)
               + f"; the masked input {_s(p0)} dB.")
    return out
