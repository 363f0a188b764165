"""PNG plots of the evaluation results (matplotlib, Agg canvas; no pyplot state).

Every function takes ``results``: a dict model name -> the dict returned by
:func:`~sdu_ext.evaluate.layer_metrics`, :func:`~sdu_ext.evaluate.perturbation_sweep`
or :func:`~sdu_ext.evaluate.ood_shift`, or a list of such dicts (one per seed: the mean is
drawn with a band from the lowest to the highest seed), writes one PNG to ``path`` and
returns the path. Curves carry markers and line styles so that overlapping ones stay
distinguishable, and legends sit outside the axes.
The inpainting plots (``plot_psnr_*``, ``plot_residual_descending``, the image grids) take
the dicts of :mod:`sdu_ext.evaluate.inpainting`.
"""
import math
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

__all__ = ["plot_layers", "plot_descending", "plot_sweep", "plot_ood", "plot_history", "plot_psnr_layers",
           "plot_residual_descending", "plot_psnr_sweep", "save_grid", "layer_grid"]


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


def _seeds(m) -> list:
    """The per-seed dicts of a result: a list as it is, one dict as a list of one."""
    return list(m) if isinstance(m, (list, tuple)) else [m]


def _band(m, get) -> Tuple[List[float], List[float], List[float]]:
    """``(mean, low, high)`` over the seeds of ``m`` of the list ``get(dict)``."""
    rows = [_finite(get(d)) for d in _seeds(m)]
    cols = list(zip(*rows))
    mean = [sum(c) / len(c) for c in cols]
    return mean, [min(c) for c in cols], [max(c) for c in cols]


def _line(ax, xs, m, get, i, name, transform=None):
    """The mean curve of ``get`` over the seeds of ``m`` with its seed band (none for one seed)."""
    mean, lo, hi = _band(m, get)
    if transform is not None:
        mean, lo, hi = ([transform(v) for v in a] for a in (mean, lo, hi))
        lo, hi = [min(a, b) for a, b in zip(lo, hi)], [max(a, b) for a, b in zip(lo, hi)]
    line, = ax.plot(xs, mean, label=name, **_style(i))
    if len(_seeds(m)) > 1:
        ax.fill_between(xs, lo, hi, color=line.get_color(), alpha=0.15, lw=0)
    return line


def _legend(fig, ax):
    """One legend for the figure, outside the axes (right of them)."""
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside right upper", fontsize=7)


def plot_layers(results: Dict[str, Any], path: str, title: str = "per-layer accuracy") -> str:
    """Distance to y* (mean over samples) and NMSE (dB) against the layer; bands over seeds."""
    fig, (ax_d, ax_n) = _figure(2, width=4.6)
    for i, (name, m) in enumerate(results.items()):
        layers = list(range(len(_seeds(m)[0]["distance_mean"])))
        _line(ax_d, layers, m, lambda d: d["distance_mean"], i, name)
        _line(ax_n, layers, m, lambda d: d["nmse_db"], i, name)
    ax_d.set(xlabel="layer l (0 = initial point)", ylabel="mean ||y_l - y*||", yscale="log", title=title)
    ax_n.set(xlabel="layer l (0 = initial point)", ylabel="NMSE (dB)", title="NMSE per layer")
    for ax in (ax_d, ax_n):
        ax.grid(alpha=0.3)
    _legend(fig, ax_n)
    return _save(fig, path)


def plot_descending(results: Dict[str, Any], path: str, title: str = "descending frequency per layer") -> str:
    """1 - descending frequency (the fraction of samples with r_l >= r_(l-1)) per layer on a
    log axis, so that values near 1 stay readable; zero is drawn at the axis floor
    (1 / (2 x samples)). ``results`` maps a name to a metrics dict (its ``descending``), a
    list of them (seeds: mean and band) or a list of floats (L,)."""
    fig, (ax,) = _figure(1, width=6.5)
    floor = 1e-4
    for m in results.values():
        for d in _seeds(m) if not (isinstance(m, list) and m and not isinstance(m[0], dict)) else []:
            if isinstance(d, dict) and d.get("count"):
                floor = max(floor, 0.5 / d["count"])
    for i, (name, m) in enumerate(results.items()):
        if isinstance(m, list) and m and not isinstance(m[0], dict):
            m = {"descending": m}
        layers = list(range(1, len(_seeds(m)[0]["descending"]) + 1))
        _line(ax, layers, m, lambda d: d["descending"], i, name, transform=lambda v: max(1.0 - v, floor))
    ax.axhline(0.05, color="k", lw=0.6, ls=":")
    ax.text(1, 0.05, " 1 - 0.95", fontsize=7, va="bottom")
    ax.set(xlabel="layer l", ylabel="1 - descending frequency (log)", yscale="log", ylim=(floor * 0.8, 1.2),
           title=title)
    ax.set_xticks(layers)
    ax.grid(alpha=0.3, which="both")
    _legend(fig, ax)
    return _save(fig, path)


def plot_sweep(results: Dict[str, Any], path: str) -> str:
    """Perturbation sweep: final NMSE (dB; 0 dB = the zero code) and ||y_L||_1 against sigma."""
    fig, (ax_d, ax_s) = _figure(2, width=4.6)
    for i, (name, s) in enumerate(results.items()):
        sig = _seeds(s)[0]["sigma"]
        _line(ax_d, sig, s, lambda d: d["final_nmse_db"], i, name)
        _line(ax_s, sig, s, lambda d: d["final_l1_mean"], i, name)
    ax_d.axhline(0.0, color="k", lw=0.6, ls=":")
    ax_d.set(xscale="log", xlabel="sigma", ylabel="final NMSE vs y* (dB)",
             title="final NMSE under perturbation (0 dB: y = 0)")
    ax_s.set(xscale="log", yscale="log", xlabel="sigma", ylabel="mean ||y_L||_1", title="output sparsity")
    for ax in (ax_d, ax_s):
        ax.grid(alpha=0.3, which="both")
    _legend(fig, ax_d)
    return _save(fig, path)


def plot_ood(results: Dict[str, Any], path: str) -> str:
    """OOD shift: final NMSE against the new optimum y~* and final distance, against p."""
    fig, (ax_n, ax_d) = _figure(2, width=4.6)
    for i, (name, s) in enumerate(results.items()):
        ps = _seeds(s)[0]["p"]
        _line(ax_n, ps, s, lambda d: d["final_nmse_db"], i, name)
        _line(ax_d, ps, s, lambda d: d["final_distance_mean"], i, name)
    ax_n.axhline(0.0, color="k", lw=0.6, ls=":")
    ax_n.set(xlabel="shift p", ylabel="final NMSE vs y~* (dB)", title="OOD shift (0 dB: y = 0)")
    ax_d.set(xlabel="shift p", ylabel="mean ||y_L - y~*||", yscale="log", title="final distance vs y~*")
    for ax in (ax_n, ax_d):
        ax.grid(alpha=0.3)
    _legend(fig, ax_n)
    return _save(fig, path)


def plot_history(histories: Dict[str, Any], path: str, key: str = "val_loss") -> str:
    """Training curves: ``histories`` maps a name to the trainer's history rows, or to a list
    of them (one per seed: each seed drawn thin in the name's colour and style)."""
    fig, (ax,) = _figure(1, width=6.0)
    for i, (name, runs) in enumerate(histories.items()):
        runs = runs if runs and isinstance(runs[0], list) else [runs]
        color = None
        for j, rows in enumerate(runs):
            pts = [(r["epoch"], r[key]) for r in rows if r.get(key) is not None]
            if pts:
                line, = ax.plot(*zip(*pts), label=name if j == 0 else None, color=color, lw=1.0,
                                **dict(_style(i), ms=2))
                color = line.get_color()
    ax.set(xlabel="epoch", ylabel=key, yscale="log", title=f"training: {key} (one curve per seed)")
    ax.grid(alpha=0.3, which="both")
    _legend(fig, ax)
    return _save(fig, path)


# ---------------------------------------------------------------- inpainting

def plot_psnr_layers(results: Dict[str, Any], path: str) -> str:
    """PSNR and SSIM per layer (two panels side by side); bands over seeds."""
    fig, (ax_p, ax_s) = _figure(2, width=4.6)
    for i, (name, m) in enumerate(results.items()):
        layers = list(range(len(_seeds(m)[0]["psnr"])))
        _line(ax_p, layers, m, lambda d: d["psnr"], i, name)
        _line(ax_s, layers, m, lambda d: d["ssim"], i, name)
    ax_p.set(xlabel="layer l (0 = masked input)", ylabel="PSNR (dB)", title="PSNR per layer")
    ax_s.set(xlabel="layer l (0 = masked input)", ylabel="SSIM", title="SSIM per layer")
    for ax in (ax_p, ax_s):
        ax.grid(alpha=0.3)
    _legend(fig, ax_p)
    return _save(fig, path)


def plot_residual_descending(results: Dict[str, Any], path: str, title: str) -> str:
    """1 - descending frequency (log axis) of ||grad_x f||, ||grad_z f|| and ||x_l - x|| per
    layer; bands over seeds."""
    fig, axes = _figure(3, width=3.6)
    floor = 1e-3
    for m in results.values():
        c = _seeds(m)[0].get("count")
        if c:
            floor = max(floor, 0.5 / c)
    for ax, key, text in zip(axes, ("desc_x", "desc_z", "desc_err"),
                             ("||grad_x f||", "||grad_z f|| = ||z_top||", "||x_l - x||")):
        for i, (name, m) in enumerate(results.items()):
            layers = list(range(1, len(_seeds(m)[0][key]) + 1))
            _line(ax, layers, m, lambda d: d[key], i, name, transform=lambda v: max(1.0 - v, floor))
        ax.axhline(0.05, color="k", lw=0.6, ls=":")
        ax.set(xlabel="layer l", ylabel="1 - descending frequency (log)", yscale="log", ylim=(floor * 0.8, 1.2),
               title=f"{title}: {text}")
        ax.set_xticks(layers)
        ax.grid(alpha=0.3, which="both")
    _legend(fig, axes[0])
    return _save(fig, path)


def plot_psnr_sweep(results: Dict[str, Any], path: str) -> str:
    """Final PSNR and SSIM against the perturbation level p; bands over seeds."""
    fig, (ax_p, ax_s) = _figure(2, width=4.6)
    for i, (name, s) in enumerate(results.items()):
        ps = _seeds(s)[0]["p"]
        _line(ax_p, ps, s, lambda d: d["psnr"], i, name)
        _line(ax_s, ps, s, lambda d: d["ssim"], i, name)
    first = _seeds(next(iter(results.values())))[0] if results else None
    if first is not None:  # p = 0 leaves the image exact (infinite PSNR): not drawn
        pts = [(p, v) for p, v in zip(first["p"], first["psnr_input"]) if p > 0]
        if pts:
            ax_p.plot(*zip(*pts), color="gray", lw=0.8, ls=":", label="perturbed image itself")
        if "psnr_masked" in first:
            ax_p.plot(first["p"], first["psnr_masked"], color="k", lw=0.8, ls="--", label="masked input (no network)")
    ax_p.set(xlabel="p (norm of the perturbation)", ylabel="final PSNR vs clean (dB)", title="perturbation sweep")
    ax_s.set(xlabel="p (norm of the perturbation)", ylabel="final SSIM vs clean", title="perturbation sweep")
    for ax in (ax_p, ax_s):
        ax.grid(alpha=0.3)
    _legend(fig, ax_p)
    return _save(fig, path)


def _imshow(ax, img):
    img = img.detach().cpu().clamp(0, 1)
    if img.shape[0] == 1:
        ax.imshow(img[0].numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    else:
        ax.imshow(img.permute(1, 2, 0).numpy(), interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def save_grid(path: str, columns: Sequence[Tuple[str, Any]], title: Optional[str] = None) -> str:
    """A PNG grid: ``columns`` is a list of ``(label, images (N, C, H, W))``, one column each,
    one row per image. Returns the path."""
    n = columns[0][1].shape[0]
    ncols = len(columns)
    fig, _ = _figure(1, width=1.1 * ncols, height=1.1 * n + (0.4 if title else 0.2))
    fig.clear()
    axes = fig.subplots(n, ncols, squeeze=False)
    for j, (label, imgs) in enumerate(columns):
        for i in range(n):
            _imshow(axes[i][j], imgs[i])
        axes[0][j].set_title(label, fontsize=7)
    if title:
        fig.suptitle(title, fontsize=8)
    return _save(fig, path)


def layer_grid(path: str, model, data, images: int, batch_size: int = 64, title: Optional[str] = None) -> str:
    """clean | masked | layer 1 .. L of a GLOW-Prox ``model`` on the first ``images`` test
    images of ``data`` (an :class:`~sdu_ext.problems.inpainting.InpaintingData`)."""
    from .inpainting import run_iterates

    y, x = data.pairs("test")
    it, _ = run_iterates(model, y[:images], batch_size=batch_size)
    cols = [("clean", x[:images]), ("masked", y[:images])] + [(f"layer {l}", it[l]) for l in range(1, it.shape[0])]
    return save_grid(path, cols, title)
