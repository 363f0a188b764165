"""The claims of a report (sdu_ext.experiments.claims) end to end on hand-built per-seed
metrics: each verdict follows from the numbers as the rule says, swapping the sides flips
it, ties and seed spread give "does not hold" / "inconclusive", uninformative sweep levels
are left out and named, and absolute and relative measures both appear in the evidence."""
import copy

import pytest

from sdu_ext.experiments import claims
from sdu_ext.experiments.verdicts import INPAINT_CLAIMS, LISTA_CLAIMS

SIGMAS = [0.1, 1.0, 100.0]
PS = [0.1, 0.3]
L = 4


def lista_run(desc, clean_db, sweep_db, ood_db):
    """One seed's LISTA evaluation: per-layer descending frequencies, the clean final NMSE and
    the final NMSE at each sweep / OOD level (the per-layer NMSE is made up around them)."""
    return {"clean": {"descending": list(desc), "nmse_db": [0.0, -1.0, -2.0, -3.0, clean_db]},
            "sweep": {"sigma": SIGMAS, "final_nmse_db": list(sweep_db)},
            "ood": {"p": PS, "final_nmse_db": list(ood_db)}}


def jitter(values, k):
    """Deterministic seed-to-seed variation of a list of numbers (seed k)."""
    return [v + 0.01 * (k - 1) for v in values]


def lista_runs(seeds=3):
    """Constrained: descends everywhere, degrades little; standard: wanders, degrades a lot;
    noisy in between; the sigma = 100 level is above 0 dB for every network (uninformative)."""
    runs = {}
    spec = {"constrained": ([0.99, 0.99, 0.98, 0.99], -15.0, [-14.5, -12.0, 20.0], [-12.0, -8.0]),
            "constrained_nonoise": ([0.99, 0.99, 0.99, 0.99], -16.0, [-15.0, -11.0, 25.0], [-12.5, -8.5]),
            "standard": ([0.4, 0.1, 0.0, 1.0], -14.0, [-10.0, -4.0, 30.0], [-6.0, -2.0]),
            "noisy": ([0.5, 0.2, 0.1, 1.0], -14.0, [-11.0, -6.0, 28.0], [-7.0, -3.0])}
    for v, (desc, clean, sweep, ood) in spec.items():
        runs[v] = [lista_run([min(d + 0.005 * (k - 1), 1.0) for d in desc], clean + 0.01 * (k - 1),
                             jitter(sweep, k), jitter(ood, k)) for k in range(seeds)]
    return runs


def verdicts(cl):
    return {c["id"]: c["verdict"] for c in cl}


def test_lista_claims_follow_the_numbers():
    cl = claims.assess_lista_claims(lista_runs())
    assert [c["id"] for c in cl] == list(LISTA_CLAIMS)
    v = verdicts(cl)
    assert v == {"constrained_descends": "holds", "standard_does_not_descend": "holds",
                 "robust_perturbation_vs_standard": "holds", "robust_perturbation_vs_noise": "holds",
                 "robust_ood_vs_standard": "holds", "robust_ood_vs_noise": "holds",
                 "accuracy_cost": "holds"}
    ev = {c["id"]: c["evidence"] for c in cl}
    # sigma = 100: every network above 0 dB (farther than y = 0): left out and named
    assert "left out" in ev["robust_perturbation_vs_standard"] and "100" in ev["robust_perturbation_vs_standard"]
    assert "sigma 100:" not in ev["robust_perturbation_vs_standard"]
    # absolute and relative side by side
    for k in ("robust_perturbation_vs_standard", "robust_ood_vs_noise"):
        assert "rise of the final NMSE" in ev[k] and "final NMSE -" in ev[k]
    assert "ablation" in ev["robust_perturbation_vs_noise"] and "ablation" in ev["constrained_descends"]


def test_lista_claims_flip_when_the_sides_swap():
    runs = lista_runs()
    swapped = dict(runs, constrained=runs["standard"], standard=runs["constrained"])
    v = verdicts(claims.assess_lista_claims(swapped))
    assert v["constrained_descends"] == "does not hold"
    assert v["standard_does_not_descend"] == "does not hold"
    assert v["robust_perturbation_vs_standard"] == "does not hold"
    assert v["robust_ood_vs_standard"] == "does not hold"
    # standard is now 1 dB worse than "constrained" was better: the accuracy claim is about a loss of <= 1 dB
    worse = dict(runs, constrained=[dict(r, clean=dict(r["clean"], nmse_db=r["clean"]["nmse_db"][:-1] + [-5.0]))
                                    for r in runs["constrained"]])
    assert verdicts(claims.assess_lista_claims(worse))["accuracy_cost"] == "does not hold"


def test_lista_claims_tie_spread_and_one_seed():
    runs = lista_runs()
    tie = dict(runs, noisy=copy.deepcopy(runs["constrained"]))
    v = verdicts(claims.assess_lista_claims(tie))
    # an exact tie (same values, so the same spread) is no improvement
    assert v["robust_perturbation_vs_noise"] == "does not hold" and v["robust_ood_vs_noise"] == "does not hold"
    # a spread larger than the differences makes them inconclusive
    wide = lista_runs()
    for r, d in zip(wide["constrained"], (-20.0, 0.0, 20.0)):  # seed spread 20 dB >> the differences
        r["sweep"]["final_nmse_db"] = [v + d for v in r["sweep"]["final_nmse_db"][:2]] + r["sweep"]["final_nmse_db"][2:]
        r["ood"]["final_nmse_db"] = [v + d for v in r["ood"]["final_nmse_db"]]
    v = verdicts(claims.assess_lista_claims(wide))
    assert v["robust_perturbation_vs_standard"] == "inconclusive"
    assert v["robust_ood_vs_standard"] == "inconclusive"
    # one seed: no spread to compare with
    v = verdicts(claims.assess_lista_claims(lista_runs(seeds=1)))
    assert set(v.values()) == {"inconclusive"}


def test_lista_threshold_at_the_edge():
    runs = lista_runs()
    low = [dict(r, clean=dict(r["clean"], descending=[0.99, 0.9, 0.99, 0.99])) for r in runs["constrained"]]
    assert verdicts(claims.assess_lista_claims(dict(runs, constrained=low)))["constrained_descends"] \
        == "does not hold"
    straddle = [dict(r, clean=dict(r["clean"], descending=[0.99, d, 0.99, 0.99]))
                for r, d in zip(runs["constrained"], (0.93, 0.95, 0.97))]
    assert verdicts(claims.assess_lista_claims(dict(runs, constrained=straddle)))["constrained_descends"] \
        == "inconclusive"


def test_lista_no_informative_level_is_inconclusive():
    runs = lista_runs()
    for rs in runs.values():
        for r in rs:
            r["sweep"]["final_nmse_db"] = [abs(v) + 1 for v in r["sweep"]["final_nmse_db"]]
    cl = {c["id"]: c for c in claims.assess_lista_claims(runs)}
    assert cl["robust_perturbation_vs_standard"]["verdict"] == "inconclusive"
    assert "none" in cl["robust_perturbation_vs_standard"]["evidence"]


def inpaint_run(desc, ratio, psnr0, psnr1, final, sweep, masked=(17.0, 16.0, 12.0)):
    return {"clean": {"desc_x": [0.0] + [desc] * (L - 1), "desc_z": [1.0] + [desc] * (L - 1),
                      "desc_err": [desc] * L, "ratio_x": [9.0] + [ratio] * (L - 1),
                      "ratio_z": [0.9] + [ratio] * (L - 1), "mean_ratio_err": [ratio] * L,
                      "psnr": [psnr0, psnr1, 20.0, 21.0, final]},
            "sweep": {"p": [0.0, 2.0, 8.0], "psnr": [final] + list(sweep), "psnr_masked": list(masked)}}


def inpaint_runs(seeds=3):
    spec = {"constrained": (0.99, 0.9, 17.0, 18.0, 24.0, (23.5, 22.0)),
            "standard": (0.6, 0.99, 17.0, 16.0, 24.2, (22.0, 18.0)),
            "noisy": (0.7, 0.98, 17.0, 16.5, 24.1, (22.5, 19.0))}
    return {v: [inpaint_run(d, r, p0, p1, f + 0.02 * (k - 1), [s + 0.02 * (k - 1) for s in sw])
                for k in range(seeds)] for v, (d, r, p0, p1, f, sw) in spec.items()}


def test_inpaint_claims_follow_the_numbers():
    cl = claims.assess_inpaint_claims(inpaint_runs(), first_layer=2, eps=0.05, first_eps=0.05)
    assert [c["id"] for c in cl] == list(INPAINT_CLAIMS)
    assert verdicts(cl) == {"constrained_descends": "holds", "standard_does_not_descend": "holds",
                            "constraints_satisfied": "holds", "robust_perturbation_vs_standard": "holds",
                            "robust_perturbation_vs_noise": "holds", "accuracy_cost": "holds"}
    ev = {c["id"]: c["evidence"] for c in cl}
    e = ev["robust_perturbation_vs_standard"]
    assert "PSNR drop" in e and "final PSNR" in e
    assert "layer 1" in ev["constrained_descends"]


def test_inpaint_claims_flip_and_layer_one():
    runs = inpaint_runs()
    swapped = dict(runs, constrained=runs["standard"], standard=runs["constrained"])
    v = verdicts(claims.assess_inpaint_claims(swapped, 2, 0.05, 0.05))
    assert v["constrained_descends"] == "does not hold" and v["standard_does_not_descend"] == "does not hold"
    assert v["constraints_satisfied"] == "does not hold"
    assert v["robust_perturbation_vs_standard"] == "does not hold"
    # layer 1 counts only with the layer-1 group: a layer 1 that moves away from x breaks the claim
    bad1 = [dict(r, clean=dict(r["clean"], desc_err=[0.2] + [0.99] * (L - 1))) for r in runs["constrained"]]
    assert verdicts(claims.assess_inpaint_claims(dict(runs, constrained=bad1), 2, 0.05, 0.05))[
        "constrained_descends"] == "does not hold"
    assert verdicts(claims.assess_inpaint_claims(dict(runs, constrained=bad1), 2, 0.05, None))[
        "constrained_descends"] == "holds"


def test_inpaint_levels_where_no_network_beats_the_masked_input_are_left_out():
    runs = inpaint_runs()
    for rs in runs.values():
        for r in rs:
            r["sweep"]["psnr_masked"] = [17.0, 16.0, 30.0]  # p = 8: the masked input beats every network
    cl = {c["id"]: c for c in claims.assess_inpaint_claims(runs, 2, 0.05, 0.05)}
    e = cl["robust_perturbation_vs_standard"]["evidence"]
    assert "left out (no network beats the masked input): p 8" in e and "p 8:" not in e


def test_per_seed_names_a_missing_variant():
    with pytest.raises(KeyError, match="noisy"):
        claims.per_seed({"constrained": []}, "noisy", lambda r: 0.0)
