"""Report and table helpers of the experiments, and the two report writers.

Every report folder written by ``sdu-ext reproduce`` has the same parts: ``report.md``
(head with the command and machine, setup, the claims table and its reading, per-layer
tables, robustness tables, training, timing, files), ``metrics.json`` (every number of the
report, :func:`finish_report`), ``config.json`` (the preset), ``plots/`` and
``runs/<network>/history.{csv,json}``; checkpoints and caches stay out of git through a
generated ``.gitignore`` (:func:`start_report`).
"""
import datetime
import math
import os
import platform
from typing import Any, Dict, List, Optional, Sequence

import torch

from ..presets import LABELS
from ..train.checkpoint import atomic_write_json, atomic_write_text

__all__ = ["GITIGNORE", "fmt", "table", "label", "json_safe", "mean_tree", "pm", "machine_info", "layers_table",
           "per_layer_table",
           "report_head", "report_claims", "report_tail", "start_report", "copy_logs", "report_command", "cpu_seconds",
           "finish_report", "write_lista_report", "write_inpaint_report"]

GITIGNORE = "# written by `sdu-ext reproduce`: large and machine-specific\ncheckpoints/\ncache/\n"


# ---------------------------------------------------------------- text

def fmt(v: Optional[float], digits: int = 2) -> str:
    """A number for a table: fixed point, scientific when tiny or huge, "-" for None."""
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


def table(header: Sequence[str], rows: Sequence[Sequence], escape: bool = True) -> str:
    """A markdown table; ``escape`` protects pipes inside cells (off for the terminal)."""
    cell = _cell if escape else str
    lines = ["| " + " | ".join(map(cell, header)) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(map(cell, row)) + " |" for row in rows]
    return "\n".join(lines)


def label(name: str) -> str:
    """The report label of a network (``"noisy"`` -> ``"standard + noise"``)."""
    return LABELS.get(name, name)


def json_safe(obj: Any) -> Any:
    """``obj`` with non-finite floats as strings ("inf", "nan"): valid JSON."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def mean_tree(trees: Sequence[Any]) -> Any:
    """The element-wise mean of per-seed results of one shape (nested dicts and lists of
    numbers): numbers are averaged, None stays None when any seed has None, other leaves
    (strings, bools) come from the first seed. Lists of unequal length keep the first seed's."""
    first = trees[0]
    if isinstance(first, dict):
        return {k: mean_tree([t[k] for t in trees]) if all(isinstance(t, dict) and k in t for t in trees) else first[k]
                for k in first}
    if isinstance(first, (list, tuple)):
        if all(isinstance(t, (list, tuple)) and len(t) == len(first) for t in trees):
            return [mean_tree([t[i] for t in trees]) for i in range(len(first))]
        return first
    if isinstance(first, bool) or not isinstance(first, (int, float)):
        return first
    if any(t is None or isinstance(t, bool) or not isinstance(t, (int, float)) for t in trees):
        return None
    return sum(float(t) for t in trees) / len(trees)


def pm(values: Sequence[Optional[float]], digits: int = 2) -> str:
    """``"mean ± std"`` of per-seed values for a table (sample std; just the value for one seed;
    "-" when a value is missing)."""
    if not values or any(v is None for v in values):
        return "-"
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return fmt(mean, digits)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return f"{fmt(mean, digits)} ± {fmt(std, digits)}"


def layers_table(results: Dict[str, Dict[str, list]], escape: bool = True) -> str:
    """Markdown table: descending frequency and NMSE per layer, one column pair per model."""
    names = list(results)
    L = len(next(iter(results.values()))["descending"])
    header = ["layer"] + [f"desc. freq. {n}" for n in names] + [f"NMSE dB {n}" for n in names]
    rows = []
    for l in range(L + 1):
        row = [str(l) if l else "0 (init)"]
        row += ["" if l == 0 else fmt(results[n]["descending"][l - 1]) for n in names]
        row += [fmt(results[n]["nmse_db"][l]) for n in names]
        rows.append(row)
    return table(header, rows, escape)


def per_layer_table(models: Dict[str, Dict[str, list]], keys: Sequence[str], labels: Sequence[str], digits: int = 2,
                    layers_only: bool = False) -> str:
    """Rows l = 0..L (1..L with ``layers_only``); a key with L+1 values is per iterate, one
    with L values per layer (empty in row 0)."""
    names = list(models)
    header = ["layer"] + [f"{lab} {label(n)}" for lab in labels for n in names]
    L = len(models[names[0]]["desc_x"])
    rows = []
    for l in range(1 if layers_only else 0, L + 1):
        row = [str(l) if l else "0 (input)"]
        for k in keys:
            for n in names:
                v = models[n][k]
                i = l if len(v) == L + 1 else l - 1
                row.append(fmt(v[i], digits) if i >= 0 else "")
        rows.append(row)
    return table(header, rows)


# ---------------------------------------------------------------- report parts

def machine_info() -> Dict[str, Any]:
    """Where a report was made: platform, Python, torch, CPUs, threads, the load average
    (1, 5, 15 minutes; None where the platform has none) and the date."""
    try:
        load = [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):  # not on every platform
        load = None
    return {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "cpu_count": os.cpu_count(), "threads": torch.get_num_threads(), "load": load,
            "date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")}


def report_head(title: str, command: str, results: Dict[str, Any]) -> List[str]:
    """The lines of a report up to its setup: the title and how, where and how fast it was made."""
    mach, timing = results["machine"], results["timing"]
    return [f"# {title}", "",
            f"Generated by `{command}` on {mach['date']} ({mach['platform']}, {mach['cpu_count']} CPUs, "
            f"{mach['threads']} torch thread{'s' if mach['threads'] != 1 else ''}, torch {mach['torch']}); "
            f"this invocation took {timing['total_seconds']:.0f} s wall-clock"
            + (" (it resumed earlier work, so this is not the cost of a fresh run)" if timing.get("resumed") else "")
            + (f", under a time budget of {timing['time_budget']:g} s" if timing.get("time_budget")
               else "")
            + (f"; load average at the start {mach['load_start']}, at the end {mach['load']}" if mach.get("load")
               else "")
            + ". Generated by the command; do not edit by hand.", "",
            "## Setup", ""]


def report_claims(claims: List[Dict[str, str]], reading: List[str]) -> List[str]:
    """The lines of a report's claims table and its plain-language reading (paragraphs)."""
    return ["## The paper's claims", "",
            "Decided over seeds by `sdu_ext.experiments.verdicts`: a comparison holds only when the difference "
            "exceeds the pooled seed spread (mean ± 1 std), does not hold when even the optimistic end is at most "
            "a tie, and is inconclusive otherwise (and with fewer than 2 seeds). Sweep and OOD claims use only "
            "the levels where some network beats the zero code (LISTA) or the masked input (GLOW-Prox); each row "
            "names them.", "",
            table(["claim", "verdict", "evidence"], [[f"`{r['id']}`", f"**{r['verdict']}**", r["evidence"]]
                                                      for r in claims]), "",
            "## Reading", ""] + [p + "\n" for p in reading]


def report_tail(timing: Dict[str, Any], kept: str) -> List[str]:
    """The last lines of a report: the timing table and the files, ``kept`` saying which
    files stay out of git."""
    cpu = timing.get("cpu_seconds")
    return ["## Timing", "",
            table(["phase", "seconds"], [[k.replace("_seconds", ""), f"{v:.1f}"] for k, v in timing.items()
                                          if k.endswith("_seconds") and k != "cpu_seconds"]), "",
            *([f"CPU time of the process and its worker processes (user + system, all threads): {cpu:.0f} s; "
               "on idle cores the wall-clock time is about this divided by the number of threads that ran in "
               "parallel (a shared machine stretches the wall-clock time, not the CPU time).", ""]
              if cpu is not None else []),
            "## Files", "",
            "`metrics.json` (every number above), `config.json` (the preset), `plots/`, "
            "`runs/<network>/history.{csv,json}` (per-epoch logs). " + kept, ""]


def start_report(preset, out: str) -> str:
    """Make the report folder ``out`` with its ``.gitignore`` and ``config.json`` (the preset)."""
    os.makedirs(out, exist_ok=True)
    atomic_write_text(GITIGNORE, os.path.join(out, ".gitignore"))
    atomic_write_json(preset.to_dict(), os.path.join(out, "config.json"))
    return out


def copy_logs(run_dir: str, log_dir: str) -> None:
    """Copy a training run's ``history.{csv,json}`` from ``run_dir`` into the report's ``log_dir``."""
    for name in ("history.csv", "history.json"):
        with open(os.path.join(run_dir, name), "rb") as f:
            atomic_write_text(f.read().decode("utf-8"), os.path.join(log_dir, name))


def report_command(kind: str, preset, options, out: str) -> str:
    """The command line a report states: ``sdu-ext reproduce <kind>`` with the options that change it
    (``options`` a :class:`~sdu_ext.experiments.common.RunOptions`)."""
    return f"sdu-ext reproduce {kind} --preset {preset.name}" + (f" --seed {options.seed}" if options.seed else "") \
        + (f" --epochs {options.epochs}" if options.epochs is not None else "") \
        + (f" --threads {options.threads}" if options.threads is not None else "") \
        + (f" --time-budget {options.time_budget:g}" if options.time_budget is not None else "") \
        + (f" --jobs {options.jobs}" if options.jobs != 1 else "") + f" --out {out}"


def cpu_seconds() -> float:
    """User + system CPU seconds of this process so far (all threads) and of its ended worker
    processes (``--jobs``)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def finish_report(out: str, results: Dict[str, Any]) -> int:
    """Write ``metrics.json`` (after ``report.md``) and print where the report is and its verdicts; returns 0."""
    atomic_write_json(json_safe(results), os.path.join(out, "metrics.json"))
    print(f"report: {os.path.join(out, 'report.md')} ({results['timing']['total_seconds']:.0f} s)")
    for r in results["claims"]:
        print(f"  [{r['verdict']}] {r['id']}")
    return 0


# ---------------------------------------------------------------- the two reports

def _setup_runs(preset, results) -> List[str]:
    """The setup lines every report shares: networks, seeds, schedule."""
    tc = preset.train
    seeds = results["seeds"]
    sched = ("constant learning rate" if tc.lr_schedule is None else
             f"plateau schedule: the lr is multiplied by {tc.lr_factor:g} after {tc.lr_patience} epochs without a "
             f"relative improvement of {tc.lr_threshold:g} of the noise-free validation loss, and training ends at "
             f"the plateau after {tc.lr_reductions} reductions (\"converged\")")
    return [f"- Networks: {', '.join(label(v) for v in preset.variants)}; each trained for {len(seeds)} seed"
            f"{'s' if len(seeds) != 1 else ''} ({', '.join(map(str, seeds))}). Within a seed every network starts "
            "from the same weights and sees the same batches; the seed also sets every evaluation draw.",
            f"- Training: at most {tc.epochs} epochs, batch {tc.batch_size}, {tc.optimizer} lr {tc.lr:g}, dual lr "
            f"{tc.lr_dual:g} (step every {tc.dual_every})"
            + (f", early stopping after {tc.patience} epochs without a better validation loss" if tc.patience else "")
            + f"; {sched}; the weights with the best noise-free validation loss are kept."]


def _runs_table(results, nmse_key: str, nmse_head: str) -> str:
    """Per variant over seeds: the final metric, lowest descending frequency, epochs, stop reasons, seconds."""
    rows = []
    for v, rs in results["runs"].items():
        stops = sorted({r["stop"] for r in rs})
        rows.append([label(v), pm([r[nmse_key] for r in rs]), pm([r["min_descending_frequency"] for r in rs]),
                     ", ".join(str(r["best_epoch"]) for r in rs), ", ".join(str(r["epochs"]) for r in rs),
                     ", ".join(stops), pm([r["train_seconds"] for r in rs], 0)])
    return table(["network", nmse_head, "lowest desc. freq.", "best epoch per seed", "epochs per seed",
                  "training ended by", "train s per seed"], rows)


def _multiplier_lines(results, groups: Optional[Sequence[str]] = None) -> List[str]:
    """Mean ± std over seeds of the final and the largest multipliers of each constrained variant."""
    lines = []
    for v, rs in results["runs"].items():
        if rs[0]["final_multipliers"] is None:
            continue
        for g in (groups or [None]):
            def get(r, key):
                return r[key] if g is None else r[key][g]
            K = len(get(rs[0], "final_multipliers"))
            end = [pm([get(r, "final_multipliers")[i] for r in rs], 3) for i in range(K)]
            top = [pm([get(r, "max_multipliers")[i] for r in rs], 3) for i in range(K)]
            lines += [f"- {label(v)}{'' if g is None else ' ' + g}: at the end " + ", ".join(end)
                      + "; largest during training " + ", ".join(top) + ".", ""]
    return lines


def write_lista_report(out: str, preset, data, results: Dict[str, Any], command: str, reading: List[str]) -> None:
    """``report.md`` of a LISTA reproduction from the ``metrics.json`` content ``results``
    (tables: means over seeds, and mean ± std where a column says so); ``data`` is the
    :class:`~sdu_ext.experiments.lista.LassoData`, ``reading`` the plain-language paragraphs
    (:func:`~sdu_ext.experiments.claims.lista_reading`)."""
    models, base, timing = results["models"], results["baselines"], results["timing"]
    per_seed = results["per_seed"]
    names = list(models)
    lab = {k: LABELS[k] for k in names}
    d, mc, me, ev = preset.data, preset.model, preset.method, preset.evaluation
    init = f"`{mc.init}` initialisation" + (
        f" (weights ~ N(0, {mc.weight_std if mc.weight_std is not None else 0.01:g}^2), y_0 ~ N(0, "
        f"{mc.y0_std if mc.y0_std is not None else 0.01:g}^2 I) drawn at every forward pass, scale 1)"
        if mc.init == "random" else "")
    setup = [f"- Data: `{d.name}`, n = {d.n}, m = {d.m}, alpha = {d.alpha:g}"
             + (f", code density {d.density:g}" + (f", SNR {d.snr_db:g} dB" if d.snr_db is not None else "")
                if d.name == "synthetic" else f", dictionary `{d.dictionary}`")
             + f"; {data.train[0].shape[0]} training / {data.val[0].shape[0]} validation / "
               f"{data.test[0].shape[0]} test samples (data seed {d.seed}); y* = "
             + (f"the LASSO optimum, certified to a relative duality gap of {d.tol:g} (`solve_lasso`). "
                if d.reference == "solve_lasso" else f"{d.ista_steps} ISTA steps (the research code's). ")
             + (f"Dropped samples with y* = 0: {data.info['dropped_zero_optimum']}." if data.info.get(
                 "dropped_zero_optimum") else ""),
             f"- Network: LISTA, L = {mc.num_layers} {'tied' if mc.tied else 'untied'} layers, {init}.",
             f"- constrained + noise: loss on the last layer + one descent constraint per layer, residual "
             f"`{me.residual}`, form `{me.form}`, eps = {me.eps:g}, primal-dual training; noise between layers "
             f"during training ({me.noise}, sigma = {me.noise_sigma:g}). constrained (no noise): the same without "
             "the noise (the ablation that separates the constraints from the noise).",
             "- standard: loss on the last layer only, no noise. standard + noise: the same with the training noise.",
             ] + _setup_runs(preset, results) + [
             "- Metrics (test set): NMSE = 10 log10(sum ||y_l - y*||^2 / sum ||y*||^2) over the test set (the zero "
             "code y = 0 has 0 dB); descending frequency of layer l = fraction of samples with "
             "||y_l - y*|| < ||y_(l-1) - y*||.",
             f"- Perturbation sweep: y_0 ~ N(0, sigma^2 I) and noise sigma * log||grad g|| * N(0, I) after "
             f"every layer but the last, both in the reference domain of scale {ev.domain_scale:g} (the research "
             "code's x100 domain) for every network.",
             "- OOD shift: x~ = x + p N(0, I)" + (f" clipped to [{ev.ood_clip[0]:g}, {ev.ood_clip[1]:g}]"
                                                  if ev.ood_clip else " (not clipped: these signals are not in "
                                                                       "[0, 1])")
             + ", scored against the optimum y~* of the shifted signals.", ""]
    lines = report_head(f"LISTA reproduction: preset `{preset.name}`", command, results) + setup \
        + report_claims(results["claims"], reading)
    lines += ["## Per network over seeds", "",
              _runs_table(results, "final_nmse_db", "final NMSE (dB), mean ± std"), "",
              "Lowest desc. freq. = the lowest per-layer descending frequency on the clean test set (mean ± std "
              "over seeds).", ""]
    lines += ["## Per layer, clean test set (mean over seeds)", "",
              layers_table({lab[k]: models[k]["clean"] for k in names} | {k: v for k, v in base.items()}), "",
              "![per-layer distance and NMSE](plots/layers.png)", "",
              "![descending frequency](plots/descending.png)", ""]
    rows = []
    for k in names + list(base):
        if k in models:
            cs = [r["clean"] for r in per_seed[k]]
            rows.append([lab[k], pm([c["nmse_db"][-1] for c in cs]), pm([c["distance_mean"][-1] for c in cs], 3),
                         pm([c["objective_gap"][-1] for c in cs], 4), pm([c["l1_mean"][-1] for c in cs]),
                         fmt(cs[0]["l1_star"])])
        else:
            m = base[k]
            rows.append([k, fmt(m["nmse_db"][-1]), fmt(m["distance_mean"][-1], 3), fmt(m["objective_gap"][-1], 4),
                         fmt(m["l1_mean"][-1]), fmt(m["l1_star"])])
    lines += ["## Final layer, clean test set (mean ± std over seeds)", "",
              table(["network", "NMSE (dB)", "mean ||y_L - y*||", "f(y_L) - f(y*)", "||y_L||_1", "||y*||_1"], rows),
              ""]
    match = results.get("iterations_to_match")
    if match:
        L = preset.model.num_layers

        def its(k):
            return f"> {match['max_iter']}" if k is None else str(k)

        lines += ["## The learned-optimizer view", "",
                  f"How many iterations of ISTA and FISTA (step 1/Lip, from y_0 = 0, float64) reach each trained "
                  f"L = {L} network's final-layer NMSE (mean over seeds) on the test set:", "",
                  table(["network", "final NMSE (dB)", "ISTA iterations", "FISTA iterations", "FISTA / L"],
                         [[lab[k], fmt(models[k]["clean"]["nmse_db"][-1]), its(match["ista"][k]),
                           its(match["fista"][k]),
                           "-" if match["fista"][k] is None else fmt(match["fista"][k] / L, 1)] for k in names]),
                  ""]
    sigmas = models[names[0]]["robustness"]["sweep"]["sigma"]
    rows, rows_d = [], []
    for i, sg in enumerate(sigmas):
        rows.append([f"{sg:g}"] + [pm([r["sweep"]["final_nmse_db"][i] for r in per_seed[k]]) for k in names]
                    + [pm([r["sweep"]["final_nmse_db"][i] - r["clean"]["nmse_db"][-1] for r in per_seed[k]])
                       for k in names])
        rows_d.append([f"{sg:g}"] + [pm([min(r["sweep"]["descending"][i]) for r in per_seed[k]]) for k in names]
                      + [pm([min(r["sweep"]["layer_descending"][i]) for r in per_seed[k]]) for k in names])
    lines += ["## Perturbation sweep (mean ± std over seeds)", "",
              table(["sigma"] + [f"final NMSE dB {lab[k]}" for k in names]
                     + [f"rise vs clean dB {lab[k]}" for k in names], rows), "",
              "Absolute (final NMSE against y*) and relative (its rise over the network's clean final NMSE) side "
              "by side; levels where every network is above 0 dB (farther from y* than the zero code) carry no "
              "information and the claims leave them out.", "",
              table(["sigma"] + [f"min desc. {lab[k]}" for k in names]
                     + [f"min layer desc. {lab[k]}" for k in names], rows_d), "",
              "min desc. = the lowest per-layer descending frequency of the perturbed trajectory (layer l's "
              "output after its noise against layer l-1's: what the constraints bound). min layer desc. = the "
              "lowest per-layer fraction of samples whose layer output (before the noise) is closer to y* than "
              "the layer's perturbed input.", "", "![perturbation sweep](plots/sweep.png)", ""]
    un = {k: models[k]["robustness"]["under_noise"] for k in names}
    rows = []
    for l in range(preset.model.num_layers):
        rows.append([str(l + 1)] + [fmt(un[k]["descending"][l]) for k in names]
                    + [fmt(un[k]["layer_descending"][l]) for k in names]
                    + [fmt(un[k]["nmse_db"][l + 1]) for k in names])
    lines += [f"## Descending frequency per layer under noise (sigma = {ev.perturb_sigma:g}, mean over seeds)", "",
              table(["layer"] + [f"desc. {lab[k]}" for k in names] + [f"layer desc. {lab[k]}" for k in names]
                     + [f"NMSE dB {lab[k]}" for k in names], rows), "",
              "desc. and layer desc. as in the sweep table; NMSE of the perturbed iterates.", "",
              "![descending frequency under noise](plots/descending_noise.png)", ""]
    ps = models[names[0]]["robustness"]["ood"]["p"]
    rows = []
    for i, p in enumerate(ps):
        rows.append([f"{p:g}"] + [pm([r["ood"]["final_nmse_db"][i] for r in per_seed[k]]) for k in names]
                    + [pm([r["ood"]["final_nmse_db"][i] - r["clean"]["nmse_db"][-1] for r in per_seed[k]])
                       for k in names]
                    + [fmt(models[k]["robustness"]["ood"]["final_nmse_db_old"][i]) for k in names])
    lines += ["## OOD shift (mean ± std over seeds)", "",
              table(["p"] + [f"NMSE vs y~* {lab[k]}" for k in names]
                     + [f"rise vs clean {lab[k]}" for k in names]
                     + [f"NMSE vs old y* (mean) {lab[k]}" for k in names], rows), "",
              "NMSE in dB. The last columns use the clean optimum, as the research plot did; it mixes the "
              "network's error with the change of the optimum itself.", "", "![OOD shift](plots/ood.png)", ""]
    lines += ["## Training", "", "Multipliers of the constrained networks (layers 1..L, mean ± std over seeds):",
              ""] + _multiplier_lines(results) + ["![validation loss](plots/val_loss.png)", ""]
    lines += report_tail(timing, "Checkpoints and the cached OOD optima stay in `checkpoints/` and `cache/` "
                                  "(ignored by git); `--resume` reuses them.")
    atomic_write_text("\n".join(lines), os.path.join(out, "report.md"))


def write_inpaint_report(out: str, preset, results: Dict[str, Any], command: str, reading: List[str]) -> None:
    """``report.md`` of a GLOW-Prox reproduction from the ``metrics.json`` content ``results``;
    ``reading`` the plain-language paragraphs (:func:`~sdu_ext.experiments.claims.inpaint_reading`)."""
    models, timing, per_seed = results["models"], results["timing"], results["per_seed"]
    trained = list(preset.variants)
    d, mc, me, tc, ev, pc = preset.data, preset.model, preset.method, preset.train, preset.evaluation, preset.pretrain
    L = mc.num_layers
    g = results.get("glow") or {}
    sizes = results["data"]
    quant = f"{d.bits}-bit" if d.bits is not None else "8-bit (x = v / 255)"
    setup = [f"- Data: {d.image_size} x {d.image_size} {'RGB' if d.channels == 3 else 'grayscale'} crops of the colour "
             f"photographs bundled with scikit-image ({', '.join(d.images)}), {quant}; {sizes['train']} training / "
             f"{sizes['val']} validation / {sizes['test']} test images from disjoint {d.block} x {d.block} blocks "
             f"(data seed {d.seed}); a central {d.hole} x {d.hole} hole (24/64 of the side, as the research's "
             "24 x 24 in 64 x 64); y = A x, the masked image.",
             f"- Network: GLOW-Prox, L = {L} untied layers; layer l: x <- x - mu_l A^T(Ax - y), z = G_l^-1(x), "
             f"z_top <- z_top / (1 + lambda_l), x = clamp(G_l(z), 0, 1); mu_l, lambda_l >= 0 (softplus), initially "
             f"{mc.mu:g} and {mc.lam:g}; initial point the masked image. Each G_l: Glow with {mc.levels} levels x "
             f"{mc.steps} steps x {mc.hidden} hidden channels"
             + (f", all copied from one Glow pretrained by maximum likelihood on the clean training images "
                f"({pc.epochs} epochs, batch {pc.batch_size}, Adam {pc.lr:g}; test "
                f"{fmt(g.get('test_bits_per_dim'), 3)} bits/dim)" if pc.epochs else ", randomly initialised")
             + f" (one Glow for every seed, pretrained with seed {results['seed']}).",
             "- Task loss: " + ("the per-image sum ||x_L - x||^2 (the research code's loss)" if me.loss == "sum"
                                else "the per-pixel mean squared error") + " of the last layer"
             + (f" (C H W = {d.channels * d.image_size ** 2} times the per-pixel mean: the multipliers and the dual "
                "lr are on the research's scale)." if me.loss == "sum" else "."),
             f"- constrained: the task loss + descent constraints `{me.form}` (eps = {me.eps:g}) on "
             f"||grad_x f|| = ||200 A^T(A x_l - y)|| and on ||grad_z f|| = ||z_top,l||, layers {me.first_layer}..{L}"
             + (f", and a layer-1 constraint `{me.first_form}` (eps = {me.first_eps:g}) on "
                + ("the distance ||x_l - x|| to the clean image" if me.first_residual == "distance" else
                   "||[grad_x f, grad_z f]||")
                + " (at the masked input grad_x f = 0 and layer 1 shrinks the top latent by exactly 1 / (1 + "
                  "lambda_1), so no gradient residual can constrain layer 1; the distance bounds its effect on the "
                  "PSNR)" if me.first_residual else "; layer 1 unconstrained")
             + f"; primal-dual training; noise before layers 1..{L - 1}: a random unit-norm direction times "
               f"{me.noise_sigma:g} / (l + 1) (l = 0-based index of the perturbed iterate), then clamp.",
             "- standard: the task loss of the last layer only, no noise. standard + noise: the same with the "
             "training noise. untrained: the initial network (pretrained Glow in every layer), not trained as an "
             "unrolled network.",
             ] + _setup_runs(preset, results) + [
             ("- Images whose hole is black in the clean image (the masked input is already exact) are dropped: "
              f"{sizes['info']['dropped_exact_input']}." if sizes["info"].get("dropped_exact_input") else
              "- No image has a black hole (every masked input differs from its clean image)."),
             "- Metrics (test set): MSE and PSNR (10 log10(1 / MSE) per image, averaged) against the clean image, "
             "SSIM (Gaussian window 11 x 11, sigma 1.5); descending frequency of layer l = fraction of images with "
             "r_l < r_(l-1) for r = ||grad_x f||, r = ||grad_z f|| and r = ||x_l - x|| (layer 1 starts from the "
             "masked image, whose data residual is 0: only the distance can descend there).",
             f"- Perturbation sweep: x~ = clamp(x + p u, 0, 1), u a random unit-norm direction per image (the same "
             f"for every network), p in {{{', '.join(f'{p:g}' for p in ev.ps)}}}; y = A x~; scored against the "
             f"clean x. For scale: one 5-bit level is 1/32 per pixel; p u has per-pixel size about "
             f"p / {int(round((d.channels * d.image_size ** 2) ** 0.5))}.", ""]
    lines = report_head(f"GLOW-Prox inpainting reproduction: preset `{preset.name}`", command, results) \
        + setup + report_claims(results["claims"], reading)
    clean = {k: models[k]["clean"] for k in models}
    lines += ["## Per network over seeds", "",
              _runs_table(results, "final_psnr_db", "final PSNR (dB), mean ± std"), "",
              "Lowest desc. freq. = the lowest descending frequency over the constrained residuals (clean test set).",
              "", "Layer 1 (PSNR in dB, mean ± std over seeds): "
              + "; ".join(f"{label(k)} {pm([r['clean']['psnr'][0] for r in per_seed[k]])} -> "
                          f"{pm([r['clean']['psnr'][1] for r in per_seed[k]])}" for k in trained) + ".", ""]
    lines += ["## Per layer, clean test set (mean over seeds)", "",
              per_layer_table(clean, ["psnr", "ssim"], ["PSNR dB", "SSIM"]), "",
              "![PSNR and SSIM per layer](plots/layers.png)", "",
              per_layer_table(clean, ["desc_x", "desc_z", "desc_err"], ["desc. grad_x", "desc. grad_z", "desc. dist"],
                              layers_only=True), "",
              per_layer_table({k: clean[k] for k in trained}, ["ratio_x", "ratio_z", "mean_ratio_err"],
                               ["ratio grad_x", "ratio grad_z", "mean ratio dist"], 3, layers_only=True), "",
              f"desc. = fraction of test images whose residual decreased at that layer; ratio = mean r_l / mean "
              f"r_(l-1), the `ratio_of_means` constraint asks <= {1 - me.eps:g} at layers {me.first_layer}..{L}; "
              "mean ratio dist = mean over images of ||x_l - x|| / ||x_(l-1) - x||"
              + (f", which the layer-1 constraint asks <= {1 - me.first_eps:g} at layer 1." if me.first_residual ==
                 "distance" else "."), "",
              "![descending frequency](plots/descending.png)", ""]
    rows = []
    for k in models:
        cs = [r["clean"] for r in per_seed[k]]
        rows.append([label(k), pm([c["mse"][-1] for c in cs], 4), pm([c["mse_hole"][-1] for c in cs], 4),
                     pm([c["psnr"][-1] for c in cs]), fmt(models[k]["clean"]["psnr_std"][-1]),
                     pm([c["ssim"][-1] for c in cs], 3)])
    m0 = models["untrained"]["clean"]
    rows.append(["masked input", fmt(m0["mse"][0], 4), fmt(m0["mse_hole"][0], 4), fmt(m0["psnr"][0]),
                 fmt(m0["psnr_std"][0]), fmt(m0["ssim"][0], 3)])
    lines += ["## Final layer, clean test set (mean ± std over seeds)", "",
              table(["network", "MSE", "MSE in the hole", "PSNR dB", "PSNR std over images", "SSIM"], rows), "",
              "![clean | masked | final layer of each network](plots/grid_final.png)", ""]
    un = {k: models[k]["under_noise"] for k in models}
    lines += [f"## Under noise between layers (sigma = {ev.noise_sigma:g}, mean over seeds)", "",
              per_layer_table(un, ["psnr", "desc_x", "desc_z"], ["PSNR dB", "desc. grad_x", "desc. grad_z"])
              .replace("| 0 (input) |", "| 0 (input, perturbed) |"), "",
              "Row 0 is the initial point after its noise; the descending columns start at layer 1.", "",
              "![descending frequency under noise](plots/descending_noise.png)", ""]
    sw = {k: models[k]["sweep"] for k in models}
    rows = []
    first = next(iter(sw.values()))
    for i, p in enumerate(first["p"]):
        rows.append([f"{p:g}", "exact" if p == 0 else fmt(first["psnr_input"][i]), fmt(first["psnr_masked"][i])]
                    + [pm([r["sweep"]["psnr"][i] for r in per_seed[k]]) for k in sw]
                    + [pm([r["sweep"]["psnr"][0] - r["sweep"]["psnr"][i] for r in per_seed[k]]) for k in sw]
                    + [f"{fmt(sw[k]['min_desc_x'][i])} / {fmt(sw[k]['min_desc_z'][i])}" for k in trained])
    lines += ["## Perturbation sweep (mean ± std over seeds)", "",
              table(["p", "PSNR of x~ itself", "PSNR of the masked x~ (no network)"]
                    + [f"final PSNR {label(k)}" for k in sw] + [f"drop vs p = 0 {label(k)}" for k in sw]
                    + [f"min desc. x / z {label(k)}" for k in trained], rows), "",
              f"Final layer against the clean image: absolute PSNR and its drop from the network's own p = 0 value "
              f"side by side. min desc. = the lowest descending frequency of ||grad_x f|| / ||grad_z f|| over layers "
              f"{me.first_layer}..{L} (mean over seeds).", "",
              "![perturbation sweep](plots/sweep.png)", "",
              f"![clean | perturbed and masked (p = {results['grid_p']:g}) | final layer of each network]"
              "(plots/grid_perturbed.png)", ""]
    lines += ["## Reconstructions per layer", ""]
    for k in models:
        lines += [f"![{label(k)}: clean | masked | layers 1..{L}](plots/grid_{k}.png)", ""]
    c = models["constrained"]["train"]
    groups = list(c["multipliers"])
    lines += ["## Training", "",
              "Multipliers of the constrained networks (mean ± std over seeds), per group: "
              + "; ".join(f"{g} on layer(s) {', '.join(str(int(l)) for l in ls)}"
                          for g, ls in c["group_layers"].items()) + ".",
              ""] + _multiplier_lines(results, groups) + [
              table(["network"] + [f"mu_{l}" for l in range(1, L + 1)] + [f"lambda_{l}" for l in range(1, L + 1)],
                     [[label(k)] + [fmt(v, 3) for v in models[k]["train"]["mu"]]
                      + [fmt(v, 3) for v in models[k]["train"]["lam"]] for k in trained]), "",
              "![validation loss](plots/val_loss.png)", "",
              "Glow-inverse overflows: images whose decoded value in some layer was not finite or exceeded "
              "1e3 in magnitude; they skip that layer's proximal step (output = the clamped gradient step). "
              "Training counts include the validation passes.", "",
              table(["network", "training", "clean test", "under noise", "sweep (per p)"],
                     [[label(k), fmt(models[k]["train"]["overflows"], 1) if "train" in models[k] else "-",
                       fmt(models[k]["clean"]["overflows"], 1), fmt(models[k]["under_noise"]["overflows"], 1),
                       ", ".join(fmt(v, 1) for v in models[k]["sweep"]["overflows"])] for k in models]),
              "", "(Overflow counts are means over seeds.)", ""]
    if g:
        hist = g.get("history") or []
        lines += [f"Glow pretraining: {len(hist)} epochs, training bits/dim "
                  + (f"{fmt(hist[0]['bits_per_dim'], 3)} -> {fmt(hist[-1]['bits_per_dim'], 3)}" if hist else "-")
                  + f", test {fmt(g.get('test_bits_per_dim'), 3)} bits/dim (bin centres, {d.bits}-bit).", ""]
    lines += report_tail(timing, "Checkpoints (the pretrained Glow and the three networks) stay in "
                                       "`checkpoints/` (ignored by git); `--resume` reuses them.")
    atomic_write_text("\n".join(lines), os.path.join(out, "report.md"))

