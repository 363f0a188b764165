"""The paper's claims checked on an experiment's metrics, and the plain-language reading of a report.

Each ``assess_*_claims`` returns a list of ``{"claim", "verdict", "evidence"}``, verdicts
"holds", "partly holds", "does not hold" or "inconclusive"; the thresholds below are stated
in the evidence. Each ``*_reading`` turns the numbers into paragraphs by fixed rules.
"""
from typing import Any, Dict, List, Sequence, Tuple

from .report import fmt, label

__all__ = ["NEAR_ONE", "CLOSE_DB", "DEGRADED", "MATERIAL_DB", "TIE_DB", "TIE_REL", "compare", "assess_lista_claims",
           "lista_reading", "assess_inpaint_claims", "inpaint_reading"]

NEAR_ONE = 0.95     # "descends at every (constrained) layer": descending frequency >= this at every layer
CLOSE_DB = 1.0      # "final-layer accuracy close": final NMSE (LISTA) or PSNR (GLOW-Prox) within this many dB
DEGRADED = 0.1      # LISTA sweep: judged where standard's final distance rises by more than 10 %
MATERIAL_DB = 0.5   # GLOW-Prox sweep: judged where standard's final PSNR drops by more than this
TIE_DB = 0.1        # differences of dB values (NMSE rises, PSNR drops) within 0.1 dB are ties
TIE_REL = 0.02      # LISTA sweep: degradations within 2 % of each other are ties


def compare(mine: Sequence[float], other: Sequence[float], keys: Sequence[str], tie: float, unit: str, what: str,
            relative: bool = False) -> Tuple[str, str]:
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


# ---------------------------------------------------------------- LISTA

def assess_lista_claims(models: Dict[str, Dict[str, Any]]) -> List[Dict[str, str]]:
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
                "evidence": f"lowest per-layer descending frequency {fmt(dc)} (near 1: >= {NEAR_ONE:g})"})
    out.append({"claim": "standard LISTA does not descend at every layer",
                "verdict": "holds" if ds < NEAR_ONE else "does not hold",
                "evidence": f"lowest per-layer descending frequency: standard {fmt(ds)}, standard + noise {fmt(dn)}"})
    un = [min(x["under_noise"]["descending"]) for x in (c, s, n)]
    sig = c["under_noise"]["sigma"]
    out.append({"claim": f"under noise (sigma = {sig:g}) constrained descends at every layer, standard does not",
                "verdict": "holds" if un[0] >= NEAR_ONE > un[1] else "does not hold",
                "evidence": f"lowest per-layer descending frequency under noise: constrained {fmt(un[0])}, "
                            f"standard {fmt(un[1])}, standard + noise {fmt(un[2])}"})
    sigmas = c["sweep"]["sigma"]

    def degradation(x):
        clean = x["clean"]["distance_mean"][-1]
        return [d / clean for d in x["sweep"]["final_distance_mean"]]

    material = [i for i, r in enumerate(degradation(s)) if r > 1 + DEGRADED]
    for other, label in (("standard", "standard"), ("noisy", "standard + noise")):
        keys = [f"sigma {sigmas[i]:g}" for i in material]
        verdict, text = compare([degradation(c)[i] for i in material],
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
        verdict, text = compare(rise_c, rise_o, ps, TIE_DB, " dB", "smaller rise of the final NMSE (vs y~*)")
        out.append({"claim": f"constrained degrades less than {label} under the OOD shift",
                    "verdict": verdict, "evidence": text})
    fc, fs = c["clean"]["nmse_db"][-1], s["clean"]["nmse_db"][-1]
    out.append({"claim": "constrained loses little final-layer accuracy against standard",
                "verdict": "holds" if fc <= fs + CLOSE_DB else "does not hold",
                "evidence": f"final NMSE {fmt(fc)} dB vs {fmt(fs)} dB (difference {fmt(fc - fs)} dB; "
                            f"close: within {CLOSE_DB:g} dB)"})
    return out


def lista_reading(preset, results: Dict[str, Any]) -> List[str]:
    """Plain-language paragraphs of a LISTA report drawn from its numbers (rules, not hand-written)."""
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
                   f"{fmt(nu_max[l], 3)}, layer {l + 1}) and all multipliers were back at 0 at the end: the "
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
                   f"{fmt(ds)}), so the claimed contrast does not show in this run.{why}")
    rob_std = [verdict.get(f"constrained degrades less than standard under the {w}") for w in
               ("perturbation sweep", "OOD shift")]
    rob_noisy = [verdict.get(f"constrained degrades less than standard + noise under the {w}") for w in
                 ("perturbation sweep", "OOD shift")]
    if any(v in ("holds", "partly holds") for v in rob_std) and all(v == "does not hold" for v in rob_noisy):
        out.append("Constrained LISTA is more robust than standard LISTA, but standard LISTA trained with the "
                   "same noise is as robust (ties within the stated tolerances): in this run the robustness comes "
                   "from the training noise, not from the constraints.")
    fc, fs, fn = (x["clean"]["nmse_db"][-1] for x in (c, s, n))
    out.append(f"Clean final-layer NMSE: constrained {fmt(fc)} dB, standard {fmt(fs)} dB, standard + noise "
               f"{fmt(fn)} dB (ISTA with the same number of steps: {fmt(results['baselines']['ISTA']['nmse_db'][-1])} dB, FISTA "
               f"{fmt(results['baselines']['FISTA']['nmse_db'][-1])} dB).")
    return out


# ---------------------------------------------------------------- GLOW-Prox inpainting

def _min_desc(m, first_layer):
    k = first_layer - 1
    return min(m["desc_x"][k:]), min(m["desc_z"][k:])


def assess_inpaint_claims(models: Dict[str, Dict[str, Any]], first_layer: int, eps: float) -> List[Dict[str, str]]:
    """The paper's claims checked on ``models`` (name -> {"clean", "under_noise", "sweep"});
    a list of ``{"claim", "verdict", "evidence"}`` with the thresholds in the evidence."""
    c, s, n = models["constrained"], models["standard"], models["noisy"]
    L = len(c["clean"]["desc_x"])
    where = f"layers {first_layer}..{L}"
    out = []
    dc, ds, dn = (_min_desc(x["clean"], first_layer) for x in (c, s, n))
    out.append({"claim": f"constrained GLOW-Prox descends at every constrained layer ({where}; "
                         "||grad_x f|| and ||grad_z f||)",
                "verdict": "holds" if min(dc) >= NEAR_ONE else "does not hold",
                "evidence": f"lowest descending frequency: grad_x {fmt(dc[0])}, grad_z {fmt(dc[1])} "
                            f"(near 1: >= {NEAR_ONE:g})"})
    out.append({"claim": "standard GLOW-Prox does not descend at every layer",
                "verdict": "holds" if min(ds) < NEAR_ONE else "does not hold",
                "evidence": f"lowest descending frequency (grad_x, grad_z): standard {fmt(ds[0])}, {fmt(ds[1])}; "
                            f"standard + noise {fmt(dn[0])}, {fmt(dn[1])}"})
    un = [min(_min_desc(x["under_noise"], first_layer)) for x in (c, s, n)]
    sig = c["under_noise"]["sigma"]
    out.append({"claim": f"under noise (sigma = {sig:g}) constrained descends at every constrained layer, "
                         "standard does not",
                "verdict": "holds" if un[0] >= NEAR_ONE > un[1] else "does not hold",
                "evidence": f"lowest descending frequency under noise: constrained {fmt(un[0])}, standard "
                            f"{fmt(un[1])}, standard + noise {fmt(un[2])}"})
    ratio = {k: max(max(x["clean"]["ratio_x"][first_layer - 1:]), max(x["clean"]["ratio_z"][first_layer - 1:]))
             for k, x in (("constrained", c), ("standard", s))}
    out.append({"claim": f"constrained GLOW-Prox satisfies its constraints on the test set (mean r_l / mean "
                         f"r_(l-1) <= 1 - eps = {1 - eps:g}, {where})",
                "verdict": "holds" if ratio["constrained"] <= 1 - eps else "does not hold",
                "evidence": f"largest ratio of means: constrained {fmt(ratio['constrained'], 3)}, standard "
                            f"{fmt(ratio['standard'], 3)}"})

    def drop(x):
        return [x["sweep"]["psnr"][0] - v for v in x["sweep"]["psnr"]]

    ps = c["sweep"]["p"]
    material = [i for i, d in enumerate(drop(s)) if ps[i] > 0 and d > MATERIAL_DB]
    for other, label in (("standard", "standard"), ("noisy", "standard + noise")):
        claim = f"constrained degrades less than {label} under the perturbation sweep"
        if not material:
            out.append({"claim": claim, "verdict": "inconclusive",
                        "evidence": f"no perturbation level lowers standard's final PSNR by more than "
                                    f"{MATERIAL_DB:g} dB"})
            continue
        verdict, text = compare([drop(c)[i] for i in material], [drop(models[other])[i] for i in material],
                                      [f"p {ps[i]:g}" for i in material], TIE_DB, " dB",
                                      "smaller drop of the final PSNR")
        out.append({"claim": claim, "verdict": verdict,
                    "evidence": text + f" (levels where standard's PSNR drops by more than {MATERIAL_DB:g} dB)"})
    fc, fs = c["clean"]["psnr"][-1], s["clean"]["psnr"][-1]
    out.append({"claim": "constrained loses little final-layer accuracy against standard",
                "verdict": "holds" if fc >= fs - CLOSE_DB else "does not hold",
                "evidence": f"final PSNR {fmt(fc)} dB vs {fmt(fs)} dB (difference {fmt(fc - fs)} dB; close: within "
                            f"{CLOSE_DB:g} dB)"})
    return out


def inpaint_reading(preset, results: Dict[str, Any]) -> List[str]:
    """Plain-language paragraphs of a GLOW-Prox report drawn from its numbers (rules, not hand-written)."""
    models = results["models"]
    verdict = {r["claim"]: r["verdict"] for r in results["claims"]}
    c, s, n, u = (models[k] for k in ("constrained", "standard", "noisy", "untrained"))
    first = preset.method.first_layer
    out = []
    tr = c["train"]
    nu_end = [v for g in ("grad_x", "grad_z") for v in tr["multipliers"][g]]
    nu_max = {g: tr["max_multipliers"][g] for g in ("grad_x", "grad_z")}
    top = max(((g, i, v) for g, vs in nu_max.items() for i, v in enumerate(vs)), key=lambda t: t[2])
    layer = tr["constrained_layers"][top[1]]
    if top[2] == 0:
        out.append("The descent constraints never became active (every multiplier stayed at 0): every constrained "
                   "layer already descended by the required factor on the training batches, so the constrained "
                   "network trained exactly like standard + noise.")
    elif max(nu_end) == 0:
        out.append(f"The descent constraints were active only during part of training (largest multiplier "
                   f"{fmt(top[2], 4)}, {top[0]} at layer {layer}) and all multipliers were back at 0 at the end.")
    else:
        active = [f"{g} layer {tr['constrained_layers'][i]} ({fmt(v, 4)})" for g in ("grad_x", "grad_z")
                  for i, v in enumerate(tr["multipliers"][g]) if v > 0]
        out.append(f"The descent constraints were still active at the end of training: {', '.join(active)} "
                   f"(largest multiplier during training {fmt(top[2], 4)}, {top[0]} at layer {layer}).")
    dc, ds = _min_desc(c["clean"], first), _min_desc(s["clean"], first)
    if min(ds) >= NEAR_ONE:
        out.append(f"Standard GLOW-Prox also descends at every constrained layer on clean data (lowest descending "
                   f"frequency {fmt(min(ds))}), so the claimed contrast does not show in this run: every layer "
                   "starts from the same pretrained Glow and a step that shrinks the top latent, which descends "
                   "on its own, and short training keeps it so.")
    elif min(dc) > min(ds):
        out.append(f"The constrained network descends more consistently than the standard one (lowest descending "
                   f"frequency over layers {first}..L: {fmt(min(dc))} against {fmt(min(ds))}).")
    p_in, p1c, p1s = c["clean"]["psnr"][0], c["clean"]["psnr"][1], s["clean"]["psnr"][1]
    if first > 1 and p1c < p_in and p1c < p1s - CLOSE_DB:
        out.append(f"Layer 1 is not constrained (the constraints start at layer {first}), and the constrained "
                   f"network's first layer makes the image worse (PSNR {fmt(p_in)} dB in, {fmt(p1c)} dB out; "
                   f"standard: {fmt(p1s)} dB out). The constraints compare each layer with the previous one, so a "
                   "worse layer-1 output makes them easier to satisfy.")
    rs = verdict.get("constrained degrades less than standard under the perturbation sweep")
    rn = verdict.get("constrained degrades less than standard + noise under the perturbation sweep")
    sc, ss = c["sweep"], s["sweep"]
    higher = [f"{p:g}" for p, a, b in zip(sc["p"], sc["psnr"], ss["psnr"]) if p > 0 and a > b + TIE_DB]
    n_p = sum(1 for p in sc["p"] if p > 0)
    if rs in ("holds", "partly holds") and len(higher) < n_p:
        out.append(f"The sweep claim compares drops from each network's own clean PSNR. In absolute terms the "
                   f"constrained network's final PSNR is higher than standard's at {len(higher)} of {n_p} "
                   f"perturbation levels{' (p = ' + ', '.join(higher) + ')' if higher else ''}: part of its smaller "
                   "drop comes from its lower clean PSNR.")
    if rs in ("holds", "partly holds") and rn == "does not hold":
        out.append("Constrained GLOW-Prox is more robust than standard GLOW-Prox, but standard GLOW-Prox trained "
                   "with the same noise is as robust or more: in this run the robustness comes from the training "
                   "noise, not from the constraints.")
    elif rs == "does not hold":
        out.append("Constrained GLOW-Prox is not more robust than standard GLOW-Prox under the perturbation sweep "
                   "in this run.")
    over = {k: models[k]["clean"]["overflows"] + models[k]["under_noise"]["overflows"]
            + sum(models[k]["sweep"]["overflows"]) for k in models}
    if any(over.values()):
        out.append("The Glow inverse overflowed during evaluation for some images (" + ", ".join(
            f"{label(k)} {v}" for k, v in over.items() if v) + " image-passes; see the Training section); those "
                   "images skipped the proximal step of that layer, which lowers their reconstruction quality.")
    f = {k: models[k]["clean"]["psnr"][-1] for k in models}
    out.append(f"Clean final-layer PSNR: constrained {fmt(f['constrained'])} dB, standard {fmt(f['standard'])} dB, "
               f"standard + noise {fmt(f['noisy'])} dB; the untrained network (the pretrained Glow in every layer) "
               f"{fmt(f['untrained'])} dB and the masked input itself {fmt(u['clean']['psnr'][0])} dB. "
               f"Inside the hole: MSE {fmt(c['clean']['mse_hole'][-1], 4)} (constrained), "
               f"{fmt(s['clean']['mse_hole'][-1], 4)} (standard), {fmt(n['clean']['mse_hole'][-1], 4)} "
               f"(standard + noise), {fmt(u['clean']['mse_hole'][-1], 4)} (untrained).")
    return out

