"""PNG plots of the evaluation results (matplotlib, Agg canvas; no pyplot state).

Every function takes ``results``: a dict model name -> the dict returned by
:func:`~sdu_ext.evaluate.layer_metrics`, :func:`~sdu_ext.evaluate.perturbation_sweep`
or :func:`~sdu_ext.evaluate.ood_shift`, writes one PNG to ``path`` and returns the path.
"""
import math
import os


def _figure(ncols=1, width=5.0, height=3.6):
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("plots: matplotlib is needed for the PNG plots (pip install matplotlib)") from e
    fig = Figure(figsize=(width * ncols, height), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(1, ncols, i + 1) for i in range(ncols)]
    return fig, axes


def _save(fig, path):
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, format="png")
    return path


_STYLES = [dict(marker="o", ls="-"), dict(marker="s", ls="--"), dict(marker="^", ls=":"),
           dict(marker="D", ls="-."), dict(marker="v", ls="-")]


def _style(i):
    """Marker and line style of series i, so that overlapping curves stay visible."""
    return dict(_STYLES[i % len(_STYLES)], ms=4)


def _finite(values):
    return [v if v is not None and math.isfinite(v) else math.nan for v in values]


def plot_layers(results, path, title="per-layer accuracy"):
    """Distance to y* (mean, with a 10-90 % quantile band) and NMSE (dB) against the layer."""
    fig, (ax_d, ax_n) = _figure(2)
    for i, (name, m) in enumerate(results.items()):
        layers = list(range(len(m["distance_mean"])))
        line, = ax_d.plot(layers, m["distance_mean"], label=name, **_style(i))
        if "distance_q10" in m:
            ax_d.fill_between(layers, m["distance_q10"], m["distance_q90"], color=line.get_color(), alpha=0.12)
        ax_n.plot(layers, _finite(m["nmse_db"]), label=name, **_style(i))
    ax_d.set(xlabel="layer l (0 = initial point)", ylabel="||y_l - y*||", yscale="log", title=title)
    ax_n.set(xlabel="layer l (0 = initial point)", ylabel="NMSE (dB)", title="NMSE per layer")
    for ax in (ax_d, ax_n):
        ax.grid(alpha=0.3)
    ax_n.legend(fontsize=8)
    return _save(fig, path)


def plot_descending(results, path, title="descending frequency per layer"):
    """Grouped bars: the fraction of samples with r_l < r_{l-1}, per layer and model.

    ``results`` maps a name to either a metrics dict (its ``descending``) or a list (L,)."""
    fig, (ax,) = _figure(1, width=7.0)
    names = list(results)
    k = max(len(names), 1)
    width = 0.8 / k
    for i, name in enumerate(names):
        d = results[name]
        d = d["descending"] if isinstance(d, dict) else d
        xs = [l + 1 + (i - (k - 1) / 2) * width for l in range(len(d))]
        ax.bar(xs, d, width=width, label=name)
    ax.axhline(1.0, color="k", lw=0.6, ls=":")
    ax.set(xlabel="layer l", ylabel="fraction with r_l < r_(l-1)", ylim=(0, 1.05), title=title)
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3, axis="y")
    return _save(fig, path)


def plot_sweep(results, path):
    """Perturbation sweep: final distance and ||y_L||_1 against sigma (log-log)."""
    fig, (ax_d, ax_s) = _figure(2)
    for i, (name, s) in enumerate(results.items()):
        ax_d.plot(s["sigma"], _finite(s["final_distance_mean"]), label=name, **_style(i))
        ax_s.plot(s["sigma"], _finite(s["final_l1_mean"]), label=name, **_style(i))
    ax_d.set(xscale="log", yscale="log", xlabel="sigma", ylabel="mean ||y_L - y*||",
             title="final distance under perturbation")
    ax_s.set(xscale="log", yscale="log", xlabel="sigma", ylabel="mean ||y_L||_1", title="output sparsity")
    for ax in (ax_d, ax_s):
        ax.grid(alpha=0.3, which="both")
    ax_d.legend(fontsize=8)
    return _save(fig, path)


def plot_ood(results, path):
    """OOD shift: final NMSE against the new optimum y~* and final distance, against p."""
    fig, (ax_n, ax_d) = _figure(2)
    for i, (name, s) in enumerate(results.items()):
        ax_n.plot(s["p"], _finite(s["final_nmse_db"]), label=name, **_style(i))
        ax_d.plot(s["p"], _finite(s["final_distance_mean"]), label=name, **_style(i))
    ax_n.set(xlabel="shift p", ylabel="final NMSE vs y~* (dB)", title="OOD shift")
    ax_d.set(xlabel="shift p", ylabel="mean ||y_L - y~*||", yscale="log", title="final distance vs y~*")
    for ax in (ax_n, ax_d):
        ax.grid(alpha=0.3)
    ax_n.legend(fontsize=8)
    return _save(fig, path)


def plot_history(histories, path, key="val_loss"):
    """Training curves: ``histories`` maps a name to the trainer's history rows."""
    fig, (ax,) = _figure(1)
    for i, (name, rows) in enumerate(histories.items()):
        pts = [(r["epoch"], r[key]) for r in rows if r.get(key) is not None]
        if pts:
            ax.plot(*zip(*pts), label=name, **_style(i))
    ax.set(xlabel="epoch", ylabel=key, yscale="log", title=f"training: {key}")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return _save(fig, path)
