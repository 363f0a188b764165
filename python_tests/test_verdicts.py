"""Seed-based verdicts (sdu_ext.experiments.verdicts) on hand-built metrics: wins and
losses, ties, spread, one seed, NaN, threshold claims in both directions, sweep levels."""
import math

import pytest

from sdu_ext.experiments import verdicts as V

HOLDS, FAILS, INC = V.HOLDS, V.FAILS, V.INCONCLUSIVE


def test_compare_wins_and_losses_are_not_swapped():
    better, worse = [1.0, 1.1, 0.9], [3.0, 3.1, 2.9]  # errors: lower is better
    r = V.compare(better, worse)
    assert r["verdict"] == HOLDS and r["improvement"] == pytest.approx(2.0) and r["spread"] == pytest.approx(0.1)
    assert V.compare(worse, better)["verdict"] == FAILS
    # the same numbers as scores (higher is better) swap the verdicts
    assert V.compare(better, worse, higher_is_better=True)["verdict"] == FAILS
    assert V.compare(worse, better, higher_is_better=True)["verdict"] == HOLDS
    # negative values (NMSE in dB): -12 dB beats -10 dB
    assert V.compare([-12.0, -12.2, -11.8], [-10.0, -10.1, -9.9])["verdict"] == HOLDS


def test_compare_ties_and_tolerance():
    same = [2.0, 2.1, 1.9]
    # equal means within a spread of 0.1: could be either at tol 0, a tie once tol covers the spread
    assert V.compare(same, list(same))["verdict"] == INC
    assert V.compare(same, list(same), tol=0.15)["verdict"] == FAILS
    assert V.compare([2.0, 2.0], [2.0, 2.0])["verdict"] == FAILS  # an exact tie is not "better"
    # better by 0.05 with no spread: holds at tol 0, a tie at tol 0.1
    a, b = [1.0, 1.0, 1.0], [1.05, 1.05, 1.05]
    assert V.compare(a, b)["verdict"] == HOLDS
    assert V.compare(a, b, tol=0.1)["verdict"] == FAILS


def test_compare_within_the_seed_spread_is_inconclusive():
    # mean difference 0.5, pooled spread 1
    a, b = [0.0, 1.0, 2.0], [0.5, 1.5, 2.5]
    r = V.compare(a, b)
    assert r["spread"] == pytest.approx(1.0) and r["improvement"] == pytest.approx(0.5)
    assert r["verdict"] == INC and V.compare(b, a)["verdict"] == INC
    # the same difference beyond a smaller spread holds
    assert V.compare([0.9, 1.0, 1.1], [1.4, 1.5, 1.6])["verdict"] == HOLDS
    # a larger k demands more
    assert V.compare([0.9, 1.0, 1.1], [1.4, 1.5, 1.6], k=6.0)["verdict"] == INC


def test_one_seed_and_non_finite_values_are_inconclusive():
    assert V.compare([1.0], [5.0])["verdict"] == INC
    assert math.isnan(V.compare([1.0], [5.0])["spread"])
    assert V.compare([1.0, math.nan, 1.0], [5.0, 5.0, 5.0])["verdict"] == INC
    assert V.compare([1.0, 1.0], [math.inf, 5.0])["verdict"] == INC
    assert V.threshold([0.99], 0.95)["verdict"] == INC
    assert V.not_worse([1.0], [1.0], 1.0)["verdict"] == INC
    s = V.summarize([3.0])
    assert s["n"] == 1 and s["mean"] == 3.0 and math.isnan(s["std"])


def test_threshold_descends_and_does_not_descend():
    descends, wanders = [0.99, 0.98, 1.0], [0.0, 0.1, 0.05]
    # "descends at every layer": lowest per-layer frequency at or above 0.95
    assert V.threshold(descends, 0.95)["verdict"] == HOLDS
    assert V.threshold(wanders, 0.95)["verdict"] == FAILS
    # "does not descend": below 0.95
    assert V.threshold(wanders, 0.95, above=False)["verdict"] == HOLDS
    assert V.threshold(descends, 0.95, above=False)["verdict"] == FAILS
    # straddling 0.95
    assert V.threshold([0.9, 1.0, 0.95], 0.95)["verdict"] == INC
    assert V.threshold([0.9, 1.0, 0.95], 0.95, above=False)["verdict"] == INC


def test_not_worse_margin():
    constrained, standard = [-11.0, -11.1, -10.9], [-12.0, -12.1, -11.9]  # NMSE dB, 1 dB worse
    assert V.not_worse(constrained, standard, 1.5)["verdict"] == HOLDS
    assert V.not_worse(constrained, standard, 0.5)["verdict"] == FAILS
    assert V.not_worse(constrained, standard, 1.05)["verdict"] == INC
    assert V.not_worse(constrained, standard, 0.5)["loss"] == pytest.approx(1.0)
    # a better network always passes
    assert V.not_worse(standard, constrained, 0.0)["verdict"] == HOLDS
    # PSNR (higher is better): 30 vs 32 dB loses 2 dB
    assert V.not_worse([30.0, 30.1, 29.9], [32.0, 32.1, 31.9], 1.0, higher_is_better=True)["verdict"] == FAILS


def test_informative_levels_keep_only_levels_beating_the_zero_code():
    levels = [0.1, 1.0, 10.0, 100.0]
    errors = {"constrained": [[1, 1.2], [2, 2.2], [9, 11], [50, 60]],
              "standard": [[1, 1.1], [3, 3.0], [12, 13], [70, 80]]}
    zero = [7.0, 7.0, 7.0, 7.0]
    assert V.informative_levels(levels, errors, zero) == [0.1, 1.0]
    # one network below the zero code is enough
    assert V.informative_levels(levels, errors, [7.0, 7.0, 10.5, 7.0]) == [0.1, 1.0, 10.0]
    assert V.informative_levels(levels, errors, [0.5, 0.5, 0.5, 0.5]) == []
    with pytest.raises(ValueError, match=r"^zero_code_errors: expected one entry per level \(4\), got 3"):
        V.informative_levels(levels, errors, zero[:3])


def test_sweep_verdict_aggregation():
    assert V.sweep_verdict({}) == INC
    assert V.sweep_verdict({1: HOLDS, 10: HOLDS}) == HOLDS
    assert V.sweep_verdict({1: HOLDS, 10: INC}) == HOLDS
    assert V.sweep_verdict({1: HOLDS, 10: INC, 100: INC}) == INC
    assert V.sweep_verdict({1: HOLDS, 10: FAILS}) == INC
    assert V.sweep_verdict({1: FAILS, 10: FAILS, 100: INC}) == FAILS
    with pytest.raises(ValueError, match=r"^per_level: expected verdicts"):
        V.sweep_verdict({1: "maybe"})


def test_comparison_claim_evidence_has_absolute_and_relative_side_by_side():
    # constrained degrades less (relative) but is worse in absolute terms
    c = V.comparison_claim("robust_ood_vs_standard", "constrained", "standard",
                           absolute=([-7.0, -7.1, -6.9], [-8.0, -8.1, -7.9]),
                           relative=([3.8, 3.9, 3.7], [5.0, 5.1, 4.9]), unit="dB", what="p = 0.3",
                           ids=V.LISTA_CLAIMS)
    assert c["id"] == "robust_ood_vs_standard" and c["verdict"] == HOLDS
    ev = c["evidence"]
    assert "absolute constrained -7.00 ± 0.10 dB (n = 3) vs standard -8.00 ± 0.10 dB (n = 3) (does not hold)" in ev
    assert "relative constrained 3.80 ± 0.10 dB (n = 3) vs standard 5.00 ± 0.10 dB (n = 3) (holds, decides)" in ev
    assert "rule:" in ev and ev.startswith("p = 0.3: ")
    only_abs = V.comparison_claim("accuracy_cost", "constrained", "standard",
                                  absolute=([-7.0, -7.1, -6.9], [-8.0, -8.1, -7.9]))
    assert only_abs["verdict"] == FAILS


def test_claim_ids_and_errors():
    assert len(V.LISTA_CLAIMS) == 7 and len(V.INPAINT_CLAIMS) == 6
    assert "constraints_satisfied" in V.INPAINT_CLAIMS and "robust_ood_vs_noise" in V.LISTA_CLAIMS
    assert V.claim("constrained_descends", HOLDS, "x", ids=V.INPAINT_CLAIMS) == \
        {"id": "constrained_descends", "verdict": HOLDS, "evidence": "x"}
    with pytest.raises(ValueError, match=r"^claim_id: expected one of"):
        V.claim("robust_ood_vs_noise", HOLDS, "x", ids=V.INPAINT_CLAIMS)
    with pytest.raises(ValueError, match=r"^verdict: expected one of"):
        V.claim("accuracy_cost", "true", "x")
    with pytest.raises(ValueError, match=r"^evidence: expected a non-empty string"):
        V.claim("accuracy_cost", HOLDS, " ")
    with pytest.raises(ValueError, match=r"^mine: expected at least one per-seed value, got none"):
        V.compare([], [1.0])
    with pytest.raises(ValueError, match=r"^other: expected per-seed numbers, got an element 'a'"):
        V.compare([1.0], ["a"])
    with pytest.raises(ValueError, match=r"^tol: expected a finite number >= 0, got -0.1"):
        V.compare([1.0], [1.0], tol=-0.1)
