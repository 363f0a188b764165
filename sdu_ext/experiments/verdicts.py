"""Claims decided from seeds (SPEC section 6): pure functions, no I/O, no torch.

Every comparison takes one value per seed for each side and decides ``"holds"``,
``"does not hold"`` or ``"inconclusive"`` with one rule, stated here and in every
evidence string:

    Rule (interval of the improvement). Let ``imp`` be the improvement of the claimed
    better side over the other side, in the direction the metric improves (for a
    lower-is-better metric ``imp = mean(other) - mean(mine)``), and ``s`` the pooled seed
    spread ``sqrt((std(mine)^2 + std(other)^2) / 2)`` (sample standard deviations,
    ``ddof = 1``). With ``k`` (default 1) and a tie tolerance ``tol >= 0`` (in the
    metric's unit):

    - ``holds``          when ``imp - k s > tol``: better by more than the spread and the tolerance;
    - ``does not hold``  when ``imp + k s <= tol``: even the optimistic end is at most a tie
      (a worse side, and an exact tie with no spread, land here);
    - ``inconclusive``   otherwise (the difference is within the seed spread), and
      whenever a side has fewer than 2 seeds (no spread to compare with) or a
      non-finite value.

Threshold claims (a per-seed statistic against a fixed level, such as the lowest
descending frequency against 0.95) use the same interval: ``mean +- k std``. A
non-inferiority claim ("loses little") asks the loss to be at most a ``margin``.

Sweep claims: only levels where some network beats the zero code carry information
(farther from y* than y = 0 means every network failed), so :func:`informative_levels`
selects them and :func:`sweep_verdict` aggregates the per-level verdicts.

Claims are dicts ``{"id", "verdict", "evidence"}`` (:func:`claim`); their ids are the
ones of issue 11 (:data:`LISTA_CLAIMS`, :data:`INPAINT_CLAIMS`).
"""
import math
import numbers

HOLDS, FAILS, INCONCLUSIVE = "holds", "does not hold", "inconclusive"
VERDICTS = (HOLDS, FAILS, INCONCLUSIVE)
K_SPREAD = 1.0

LISTA_CLAIMS = ("constrained_descends", "standard_does_not_descend", "robust_perturbation_vs_standard",
                "robust_perturbation_vs_noise", "robust_ood_vs_standard", "robust_ood_vs_noise", "accuracy_cost")
INPAINT_CLAIMS = ("constrained_descends", "standard_does_not_descend", "constraints_satisfied",
                  "robust_perturbation_vs_standard", "robust_perturbation_vs_noise", "accuracy_cost")


def _values(values, name):
    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
        raise ValueError(f"{name}: expected a sequence of per-seed numbers, got {type(values).__name__}")
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, numbers.Real):
            raise ValueError(f"{name}: expected per-seed numbers, got an element {v!r}")
        out.append(float(v))
    if not out:
        raise ValueError(f"{name}: expected at least one per-seed value, got none")
    return out


def _check_nonneg(v, name):
    if isinstance(v, bool) or not isinstance(v, numbers.Real) or not (v >= 0 and math.isfinite(v)):
        raise ValueError(f"{name}: expected a finite number >= 0, got {v!r}")
    return float(v)


def summarize(values, name="values"):
    """``{"mean", "std", "n"}`` of per-seed ``values`` (std with ddof = 1; NaN for one seed;
    a non-finite value makes mean and std NaN or inf as arithmetic gives them)."""
    v = _values(values, name)
    n = len(v)
    mean = sum(v) / n
    std = math.sqrt(sum((x - mean) ** 2 for x in v) / (n - 1)) if n > 1 else math.nan
    return {"mean": mean, "std": std, "n": n}


def _finite(*summaries):
    return all(s["n"] >= 2 and math.isfinite(s["mean"]) and math.isfinite(s["std"]) for s in summaries)


def _decide(lo, hi, tol):
    if lo > tol:
        return HOLDS
    if hi <= tol:
        return FAILS
    return INCONCLUSIVE


def fmt(s, digits=2, unit=""):
    """``"mean ± std unit (n seeds)"`` of a :func:`summarize` dict (std omitted for one seed)."""
    u = f" {unit}" if unit else ""
    if s["n"] < 2 or not math.isfinite(s["std"]):
        return f"{s['mean']:.{digits}f}{u} (n = {s['n']})"
    return f"{s['mean']:.{digits}f} ± {s['std']:.{digits}f}{u} (n = {s['n']})"


def compare(mine, other, *, higher_is_better=False, tol=0.0, k=K_SPREAD):
    """Is ``mine`` better than ``other``? Per-seed values of each side (any length >= 1).

    Returns ``{"verdict", "mine", "other" (summaries), "improvement", "spread", "rule"}``
    with the rule of the module docstring; ``improvement`` is positive when ``mine`` is better.
    """
    tol, k = _check_nonneg(tol, "tol"), _check_nonneg(k, "k")
    a, b = summarize(mine, "mine"), summarize(other, "other")
    sign = 1.0 if higher_is_better else -1.0
    imp = sign * (a["mean"] - b["mean"])
    spread = math.sqrt((a["std"] ** 2 + b["std"] ** 2) / 2) if a["n"] > 1 and b["n"] > 1 else math.nan
    verdict = _decide(imp - k * spread, imp + k * spread, tol) if _finite(a, b) else INCONCLUSIVE
    rule = (f"holds if the improvement minus {k:g} x the pooled seed spread exceeds {tol:g}; does not hold if "
            f"the improvement plus that spread is at most {tol:g}; inconclusive otherwise or with < 2 seeds")
    return {"verdict": verdict, "mine": a, "other": b, "improvement": imp, "spread": spread, "rule": rule}


def not_worse(mine, other, margin, *, higher_is_better=False, k=K_SPREAD):
    """Non-inferiority: does ``mine`` lose at most ``margin`` against ``other``?

    ``loss = -(improvement)`` as in :func:`compare`; holds when ``loss + k s <= margin``,
    does not hold when ``loss - k s > margin``, inconclusive otherwise (or < 2 seeds).
    Returns the :func:`compare`-style dict with ``"loss"`` instead of ``"improvement"``."""
    margin, k = _check_nonneg(margin, "margin"), _check_nonneg(k, "k")
    a, b = summarize(mine, "mine"), summarize(other, "other")
    sign = 1.0 if higher_is_better else -1.0
    loss = -sign * (a["mean"] - b["mean"])
    spread = math.sqrt((a["std"] ** 2 + b["std"] ** 2) / 2) if a["n"] > 1 and b["n"] > 1 else math.nan
    verdict = INCONCLUSIVE
    if _finite(a, b):
        verdict = HOLDS if loss + k * spread <= margin else FAILS if loss - k * spread > margin else INCONCLUSIVE
    rule = (f"holds if the loss plus {k:g} x the pooled seed spread is at most {margin:g}; does not hold if "
            f"the loss minus that spread exceeds {margin:g}; inconclusive otherwise or with < 2 seeds")
    return {"verdict": verdict, "mine": a, "other": b, "loss": loss, "spread": spread, "rule": rule}


def threshold(values, level, *, above=True, k=K_SPREAD):
    """Is the per-seed statistic ``values`` at or above ``level`` (``above=True``), or below
    it (``above=False``)? Holds when the whole interval ``mean +- k std`` lies on the
    claimed side (``>= level`` for above, ``< level`` for below), does not hold when it
    lies wholly on the other side, inconclusive otherwise (or with < 2 seeds / non-finite).
    Returns ``{"verdict", "summary", "level", "rule"}``."""
    k = _check_nonneg(k, "k")
    if isinstance(level, bool) or not isinstance(level, numbers.Real) or not math.isfinite(level):
        raise ValueError(f"level: expected a finite number, got {level!r}")
    s = summarize(values)
    verdict = INCONCLUSIVE
    if _finite(s):
        lo, hi = s["mean"] - k * s["std"], s["mean"] + k * s["std"]
        if above:
            verdict = HOLDS if lo >= level else FAILS if hi < level else INCONCLUSIVE
        else:
            verdict = HOLDS if hi < level else FAILS if lo >= level else INCONCLUSIVE
    side = ">=" if above else "<"
    rule = f"holds if mean ± {k:g} std over seeds lies wholly {side} {level:g}; inconclusive if it straddles it"
    return {"verdict": verdict, "summary": s, "level": float(level), "rule": rule}


def informative_levels(levels, network_errors, zero_code_errors):
    """The sweep levels where some network beats the zero code.

    ``levels``: the level values (e.g. sigmas); ``network_errors``: ``{network: [[per-seed
    error] per level]}``; ``zero_code_errors``: the error of y = 0 per level (one number,
    or per-seed values). A level is kept when some network's mean error is below the zero
    code's mean error. Returns the kept levels in order."""
    levels = list(levels)
    zero = [summarize(z if hasattr(z, "__iter__") else [z], "zero_code_errors")["mean"] for z in zero_code_errors]
    if len(zero) != len(levels):
        raise ValueError(f"zero_code_errors: expected one entry per level ({len(levels)}), got {len(zero)}")
    kept = []
    for i, level in enumerate(levels):
        for name, per_level in network_errors.items():
            if len(per_level) != len(levels):
                raise ValueError(f"network_errors[{name!r}]: expected one entry per level ({len(levels)}), "
                                 f"got {len(per_level)}")
            if summarize(per_level[i], f"network_errors[{name!r}]")["mean"] < zero[i]:
                kept.append(level)
                break
    return kept


def sweep_verdict(per_level):
    """Aggregate per-level verdicts ``{level: verdict}`` (informative levels only).

    holds: it holds at at least half of the levels and fails at none; does not hold: it
    fails at at least half and holds at none; inconclusive otherwise, and with no level."""
    verdicts = list(per_level.values())
    for v in verdicts:
        if v not in VERDICTS:
            raise ValueError(f"per_level: expected verdicts in {VERDICTS}, got {v!r}")
    n = len(verdicts)
    if n == 0:
        return INCONCLUSIVE
    holds, fails = verdicts.count(HOLDS), verdicts.count(FAILS)
    if holds * 2 >= n and fails == 0:
        return HOLDS
    if fails * 2 >= n and holds == 0:
        return FAILS
    return INCONCLUSIVE


def claim(claim_id, verdict, evidence, ids=None):
    """A claim dict ``{"id", "verdict", "evidence"}``; ``ids`` (e.g. :data:`LISTA_CLAIMS`)
    restricts the id. ValueError on an unknown id or verdict or an empty evidence."""
    if ids is not None and claim_id not in ids:
        raise ValueError(f"claim_id: expected one of {', '.join(ids)}, got {claim_id!r}")
    if verdict not in VERDICTS:
        raise ValueError(f"verdict: expected one of {VERDICTS}, got {verdict!r}")
    if not isinstance(evidence, str) or not evidence.strip():
        raise ValueError(f"evidence: expected a non-empty string, got {evidence!r}")
    return {"id": claim_id, "verdict": verdict, "evidence": evidence}


def comparison_claim(claim_id, mine_name, other_name, absolute, relative=None, *, unit="", what="",
                     higher_is_better=False, tol=0.0, ids=None, digits=2):
    """A claim from a :func:`compare` of per-seed values, with absolute and relative figures
    side by side in the evidence.

    ``absolute``: ``(mine, other)`` per-seed values of the absolute measure (e.g. final NMSE
    in dB). ``relative``: optional ``(mine, other)`` per-seed values of the relative measure
    (e.g. the change against each network's clean value); when given the verdict is taken
    on it (the claims are about degradation) and the absolute comparison is reported next
    to it, else the verdict is the absolute one."""
    abs_cmp = compare(*absolute, higher_is_better=higher_is_better, tol=tol)
    parts = [f"{what + ': ' if what else ''}absolute {mine_name} {fmt(abs_cmp['mine'], digits, unit)} vs "
             f"{other_name} {fmt(abs_cmp['other'], digits, unit)} ({abs_cmp['verdict']})"]
    decisive = abs_cmp
    if relative is not None:
        rel_cmp = compare(*relative, higher_is_better=higher_is_better, tol=tol)
        parts.append(f"relative {mine_name} {fmt(rel_cmp['mine'], digits, unit)} vs "
                     f"{other_name} {fmt(rel_cmp['other'], digits, unit)} ({rel_cmp['verdict']}, decides)")
        decisive = rel_cmp
    parts.append(f"rule: {decisive['rule']}")
    return claim(claim_id, decisive["verdict"], "; ".join(parts), ids=ids)
