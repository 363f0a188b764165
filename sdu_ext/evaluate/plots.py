"""PNG plots of the evaluation results (matplotlib, Agg canvas; no pyplot state).

Every function takes ``results``: a dict model name -> the dict returned by
:func:`~sdu_ext.evaluate.layer_metrics`, :func:`~sdu_ext.evaluate.perturbation_sweep`
or :func:`~sdu_ext.evaluate.ood_shift`, writes one PNG to ``path`` and returns the path.
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


def plot_layers(results: Dict[str, Dict[str, Any]], path: str, title: str = "per-layer accuracy") -> str:
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


def plot_descending(results: Dict[str, Any], path: str, title: str = "descending frequency per layer") -> str:
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


def plot_sweep(results: Dict[str, Dict[str, list]], path: str) -> str:
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


def plot_ood(results: Dict[str, Dict[str, list]], path: str) -> str:
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


def plot_history(histories: Dict[str, List[dict]], path: str, key: str = "val_loss") -> str:
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


# ---------------------------------------------------------------- inpainting

def plot_psnr_layers(results: Dict[str, Dict[str, list]], path: str) -> str:
    """PSNR and SSIM per layer (two PNG panels side by side)."""
    fig, (ax_p, ax_s) = _figure(2)
    for i, (name, m) in enumerate(results.items()):
        layers = list(range(len(m["psnr"])))
        ax_p.plot(layers, m["psnr"], label=name, **_style(i))
        ax_s.plot(layers, m["ssim"], label=name, **_style(i))
    ax_p.set(xlabel="layer l (0 = masked input)", ylabel="PSNR (dB)", title="PSNR per layer")
    ax_s.set(xlabel="layer l (0 = masked input)", ylabel="SSIM", title="SSIM per layer")
    for ax in (ax_p, ax_s):
        ax.grid(alpha=0.3)
    ax_p.legend(fontsize=8)
    return _save(fig, path)


def plot_residual_descending(results: Dict[str, Dict[str, list]], path: str, title: str) -> str:
    """Grouped bars of the descending frequency of ||grad_x f|| and ||grad_z f|| per layer."""
    fig, axes = _figure(2, width=5.5)
    names = list(results)
    k = max(len(names), 1)
    width = 0.8 / k
    for ax, key, label in zip(axes, ("desc_x", "desc_z"), ("||grad_x f||", "||grad_z f|| = ||z_top||")):
        for i, name in enumerate(names):
            d = results[name][key]
            ax.bar([l + 1 + (i - (k - 1) / 2) * width for l in range(len(d))], d, width=width, label=name)
        ax.axhline(1.0, color="k", lw=0.6, ls=":")
        ax.set(xlabel="layer l", ylabel="fraction with r_l < r_(l-1)", ylim=(0, 1.05), title=f"{title}: {label}")
        ax.grid(alpha=0.3, axis="y")
    axes[0].legend(fontsize=7, loc="lower right")
    return _save(fig, path)


def plot_psnr_sweep(results: Dict[str, Dict[str, list]], path: str) -> str:
    """Final PSNR and SSIM against the perturbation level p."""
    fig, (ax_p, ax_s) = _figure(2)
    for i, (name, s) in enumerate(results.items()):
        ax_p.plot(s["p"], s["psnr"], label=name, **_style(i))
        ax_s.plot(s["p"], s["ssim"], label=name, **_style(i))
    first = next(iter(results.values()), None)
    if first is not None:  # p = 0 leaves the image exact (infinite PSNR): not drawn
        pts = [(p, v) for p, v in zip(first["p"], first["psnr_input"]) if p > 0]
        if pts:
            ax_p.plot(*zip(*pts), color="gray", lw=0.8, ls=":", label="perturbed image itself")
    ax_p.set(xlabel="p (norm of the perturbation)", ylabel="final PSNR vs clean (dB)", title="perturbation sweep")
    ax_s.set(xlabel="p (norm of the perturbation)", ylabel="final SSIM vs clean", title="perturbation sweep")
    for ax in (ax_p, ax_s):
        ax.grid(alpha=0.3)
    ax_p.legend(fontsize=8)
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
