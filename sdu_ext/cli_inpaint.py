"""The inpainting commands of ``sdu-ext`` (registered by :func:`add_parsers`).

    sdu-ext inpaint train      --preset quick --mode constrained --out runs/c [--glow FILE]
    sdu-ext inpaint eval       --checkpoint runs/c [--preset quick] [--out DIR]
    sdu-ext reproduce inpaint  --preset quick --out results/inpaint_quick [--resume]

``reproduce`` pretrains one Glow by maximum likelihood on the clean training images, copies it
into every layer of three GLOW-Prox networks (constrained, standard, standard + noise), trains
them on the same batches, evaluates them and the untrained network with the same protocol and
writes a report folder: ``report.md``, ``metrics.json``, ``config.json``, ``plots/*.png``
(metrics and image grids), ``runs/<model>/history.*`` and, ignored by git through a generated
``.gitignore``, ``checkpoints/`` (``glow/glow.pt`` and ``<model>/{best,last}.pt``).
``--resume`` continues killed runs and reuses finished ones and the pretrained Glow.

Seeds: the data set is fixed by the preset; ``--seed`` seeds the Glow, the training (shuffling,
noise) and every evaluation draw.
"""
import dataclasses
import os
import time

import torch
from tqdm.auto import tqdm

from . import cli as base
from . import inpaint as I
from .cli import CLIError, _f, _json_safe, _table
from .train.checkpoint import atomic_write_json, atomic_write_text

NEAR_ONE = 0.95    # "descends at every layer": descending frequency >= this at every constrained layer
CLOSE_DB = 1.0     # "final-layer accuracy close": final PSNR within this many dB
MATERIAL_DB = 0.5  # the sweep claim is judged where standard's final PSNR drops by more than this
TIE_DB = 0.1       # PSNR drops within 0.1 dB of each other are ties


# ---------------------------------------------------------------- data, models

def prepare_data(preset, cache_dir=None, device="cpu"):
    """The :class:`~sdu_ext.problems.inpainting.InpaintingData` of ``preset.data`` (through
    the on-disk cache, ``cache_dir`` default ``$SDU_EXT_CACHE`` or ``~/.cache/sdu_ext``) on ``device``."""
    from .problems import inpainting

    data = inpainting.load(preset.data, cache_dir=cache_dir)
    if device != "cpu":
        data = dataclasses.replace(data, train=data.train.to(device), val=data.val.to(device),
                                   test=data.test.to(device), mask=data.mask.to(device))
    return data


def _sizes_text(s):
    return ", ".join(f"{k}={v}" for k, v in s.items())


def load_model(path, preset=None, device="cpu"):
    """A GLOW-Prox checkpoint written by these commands (``best.pt``/``last.pt`` or a run
    directory) as ``(model, preset, variant)``. ``preset`` must match the sizes the
    checkpoint was trained for; without it the preset stored in the checkpoint is used."""
    from .problems.inpainting import central_mask

    path, state = base._read_checkpoint(path, "inpaint")
    meta = state.get("metadata") or {}
    if meta.get("format") != I.INPAINT_FORMAT:
        raise CLIError(f"checkpoint: {path!r} is not a GLOW-Prox checkpoint written by `sdu-ext inpaint` "
                       f"(metadata format {meta.get('format')!r}, expected {I.INPAINT_FORMAT!r})")
    stored = I.InpaintPreset.from_dict(meta["preset"])
    if preset is None:
        preset = stored
    if preset.sizes() != stored.sizes():
        raise CLIError(f"checkpoint: {path!r} was trained for another size ({_sizes_text(stored.sizes())}); "
                       f"preset {preset.name!r} has {_sizes_text(preset.sizes())}")
    mask = central_mask(preset.data.image_size, preset.data.hole)
    model = base._load_weights(I.build_model(preset, mask), state["model"], path, preset, device)
    return model, preset, meta.get("variant", "unknown")


def _glow(preset, data, path, args, device, progress):
    """The pretrained Glow: ``--glow FILE`` if given (must match the preset and seed), else
    pretrained into ``path`` (reused from there with ``--resume``)."""
    glow_file = getattr(args, "glow", None)
    if glow_file is not None:
        if preset.pretrain.epochs == 0:
            raise CLIError(f"--glow: preset {preset.name!r} does not pretrain a Glow (pretrain.epochs = 0)")
        try:
            return I.load_glow(glow_file, preset, data, args.seed, device)
        except ValueError as e:
            raise CLIError(f"--glow: {str(e).removeprefix('glow: ')}") from e
    return I.pretrain_glow(preset, data, path, reuse=args.resume, seed=args.seed, device=device, progress=progress)


def evaluate_model(model, data, ev, seed, first_layer):
    """Clean per-layer metrics, metrics under between-layer noise and the perturbation sweep."""
    return {"clean": I.evaluate_clean(model, data, ev),
            "under_noise": I.evaluate_under_noise(model, data, ev, seed),
            "sweep": I.perturbation_sweep(model, data, ev, seed, first_layer)}


# ---------------------------------------------------------------- claims

def _min_desc(m, first_layer):
    k = first_layer - 1
    return min(m["desc_x"][k:]), min(m["desc_z"][k:])


def assess_claims(models, first_layer, eps):
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
                "evidence": f"lowest descending frequency: grad_x {_f(dc[0])}, grad_z {_f(dc[1])} "
                            f"(near 1: >= {NEAR_ONE:g})"})
    out.append({"claim": "standard GLOW-Prox does not descend at every layer",
                "verdict": "holds" if min(ds) < NEAR_ONE else "does not hold",
                "evidence": f"lowest descending frequency (grad_x, grad_z): standard {_f(ds[0])}, {_f(ds[1])}; "
                            f"standard + noise {_f(dn[0])}, {_f(dn[1])}"})
    un = [min(_min_desc(x["under_noise"], first_layer)) for x in (c, s, n)]
    sig = c["under_noise"]["sigma"]
    out.append({"claim": f"under noise (sigma = {sig:g}) constrained descends at every constrained layer, "
                         "standard does not",
                "verdict": "holds" if un[0] >= NEAR_ONE > un[1] else "does not hold",
                "evidence": f"lowest descending frequency under noise: constrained {_f(un[0])}, standard "
                            f"{_f(un[1])}, standard + noise {_f(un[2])}"})
    ratio = {k: max(max(x["clean"]["ratio_x"][first_layer - 1:]), max(x["clean"]["ratio_z"][first_layer - 1:]))
             for k, x in (("constrained", c), ("standard", s))}
    out.append({"claim": f"constrained GLOW-Prox satisfies its constraints on the test set (mean r_l / mean "
                         f"r_(l-1) <= 1 - eps = {1 - eps:g}, {where})",
                "verdict": "holds" if ratio["constrained"] <= 1 - eps else "does not hold",
                "evidence": f"largest ratio of means: constrained {_f(ratio['constrained'], 3)}, standard "
                            f"{_f(ratio['standard'], 3)}"})

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
        verdict, text = base._compare([drop(c)[i] for i in material], [drop(models[other])[i] for i in material],
                                      [f"p {ps[i]:g}" for i in material], TIE_DB, " dB",
                                      "smaller drop of the final PSNR")
        out.append({"claim": claim, "verdict": verdict,
                    "evidence": text + f" (levels where standard's PSNR drops by more than {MATERIAL_DB:g} dB)"})
    fc, fs = c["clean"]["psnr"][-1], s["clean"]["psnr"][-1]
    out.append({"claim": "constrained loses little final-layer accuracy against standard",
                "verdict": "holds" if fc >= fs - CLOSE_DB else "does not hold",
                "evidence": f"final PSNR {_f(fc)} dB vs {_f(fs)} dB (difference {_f(fc - fs)} dB; close: within "
                            f"{CLOSE_DB:g} dB)"})
    return out


def _reading(preset, results):
    """Plain-language paragraphs drawn from the numbers (rules, not hand-written)."""
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
                   f"{_f(top[2], 4)}, {top[0]} at layer {layer}) and all multipliers were back at 0 at the end.")
    else:
        active = [f"{g} layer {tr['constrained_layers'][i]} ({_f(v, 4)})" for g in ("grad_x", "grad_z")
                  for i, v in enumerate(tr["multipliers"][g]) if v > 0]
        out.append(f"The descent constraints were still active at the end of training: {', '.join(active)} "
                   f"(largest multiplier during training {_f(top[2], 4)}, {top[0]} at layer {layer}).")
    dc, ds = _min_desc(c["clean"], first), _min_desc(s["clean"], first)
    if min(ds) >= NEAR_ONE:
        out.append(f"Standard GLOW-Prox also descends at every constrained layer on clean data (lowest descending "
                   f"frequency {_f(min(ds))}), so the claimed contrast does not show in this run: every layer "
                   "starts from the same pretrained Glow and a step that shrinks the top latent, which descends "
                   "on its own, and short training keeps it so.")
    elif min(dc) > min(ds):
        out.append(f"The constrained network descends more consistently than the standard one (lowest descending "
                   f"frequency over layers {first}..L: {_f(min(dc))} against {_f(min(ds))}).")
    p_in, p1c, p1s = c["clean"]["psnr"][0], c["clean"]["psnr"][1], s["clean"]["psnr"][1]
    if first > 1 and p1c < p_in and p1c < p1s - CLOSE_DB:
        out.append(f"Layer 1 is not constrained (the constraints start at layer {first}), and the constrained "
                   f"network's first layer makes the image worse (PSNR {_f(p_in)} dB in, {_f(p1c)} dB out; "
                   f"standard: {_f(p1s)} dB out). The constraints compare each layer with the previous one, so a "
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
            f"{_lab(k)} {v}" for k, v in over.items() if v) + " image-passes; see the Training section); those "
                   "images skipped the proximal step of that layer, which lowers their reconstruction quality.")
    f = {k: models[k]["clean"]["psnr"][-1] for k in models}
    out.append(f"Clean final-layer PSNR: constrained {_f(f['constrained'])} dB, standard {_f(f['standard'])} dB, "
               f"standard + noise {_f(f['noisy'])} dB; the untrained network (the pretrained Glow in every layer) "
               f"{_f(f['untrained'])} dB and the masked input itself {_f(u['clean']['psnr'][0])} dB. "
               f"Inside the hole: MSE {_f(c['clean']['mse_hole'][-1], 4)} (constrained), "
               f"{_f(s['clean']['mse_hole'][-1], 4)} (standard), {_f(n['clean']['mse_hole'][-1], 4)} "
               f"(standard + noise), {_f(u['clean']['mse_hole'][-1], 4)} (untrained).")
    return out


# ---------------------------------------------------------------- report

def _lab(name):
    return I.LABELS.get(name, name)


def _per_layer_table(models, keys, labels, digits=2, layers_only=False):
    """Rows l = 0..L (1..L with ``layers_only``); a key with L+1 values is per iterate, one
    with L values per layer (empty in row 0)."""
    names = list(models)
    header = ["layer"] + [f"{lab} {_lab(n)}" for lab in labels for n in names]
    L = len(models[names[0]]["desc_x"])
    rows = []
    for l in range(1 if layers_only else 0, L + 1):
        row = [str(l) if l else "0 (input)"]
        for k in keys:
            for n in names:
                v = models[n][k]
                i = l if len(v) == L + 1 else l - 1
                row.append(_f(v[i], digits) if i >= 0 else "")
        rows.append(row)
    return _table(header, rows)


def write_report(out, preset, results, command):
    """``report.md`` of a reproduction from the ``metrics.json`` content ``results``."""
    models, timing = results["models"], results["timing"]
    trained = [k for k in I.VARIANTS]
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
                f"{_f(g.get('test_bits_per_dim'), 3)} bits/dim)" if pc.epochs else ", randomly initialised")
             + f"; the three networks start from the same weights (seed {results['seed']}) and see the same "
               "batches.",
             f"- constrained: MSE of the last layer + descent constraints `{me.form}` (eps = {me.eps:g}) on "
             f"||grad_x f|| = ||200 A^T(A x_l - y)|| and on ||grad_z f|| = ||z_top,l||, layers {me.first_layer}..{L}, "
             f"primal-dual training; noise before layers 1..{L - 1}: a random unit-norm direction times "
             f"{me.noise_sigma:g} / (l + 1) (l = 0-based index of the perturbed iterate), then clamp.",
             "- standard: MSE of the last layer only, no noise. standard + noise: the same with the training noise. "
             "untrained: the initial network (pretrained Glow in every layer), not trained as an unrolled network.",
             f"- Training: {tc.epochs} epochs, batch {tc.batch_size}, {tc.optimizer} lr {tc.lr:g}, dual lr "
             f"{tc.lr_dual:g} (step every {tc.dual_every}); the weights with the best noise-free validation MSE are "
             "kept.",
             "- Metrics (test set): MSE and PSNR (10 log10(1 / MSE) per image, averaged) against the clean image, "
             "SSIM (Gaussian window 11 x 11, sigma 1.5); descending frequency of layer l = fraction of images with "
             "r_l < r_(l-1) for r = ||grad_x f|| and r = ||grad_z f|| (layer 1 starts from the masked image, whose "
             "data residual is 0: it cannot descend there and is not constrained).",
             f"- Perturbation sweep: x~ = clamp(x + p u, 0, 1), u a random unit-norm direction per image (the same "
             f"for every network), p in {{{', '.join(f'{p:g}' for p in ev.ps)}}}; y = A x~; scored against the "
             f"clean x. For scale: one 5-bit level is 1/32 per pixel; p u has per-pixel size about "
             f"p / {int(round((d.channels * d.image_size ** 2) ** 0.5))}.", ""]
    lines = base._report_head(f"GLOW-Prox inpainting reproduction: preset `{preset.name}`", command, results) \
        + setup + base._report_claims(results["claims"], _reading(preset, results))
    clean = {k: models[k]["clean"] for k in models}
    lines += ["## Per layer, clean test set", "",
              _per_layer_table(clean, ["psnr", "ssim"], ["PSNR dB", "SSIM"]), "",
              "![PSNR and SSIM per layer](plots/layers.png)", "",
              _per_layer_table(clean, ["desc_x", "desc_z"], ["desc. grad_x", "desc. grad_z"], layers_only=True), "",
              _per_layer_table({k: clean[k] for k in trained}, ["ratio_x", "ratio_z"],
                               ["ratio grad_x", "ratio grad_z"], 3, layers_only=True), "",
              f"desc. = fraction of test images whose residual decreased at that layer; ratio = mean r_l / mean "
              f"r_(l-1), the `ratio_of_means` constraint asks <= {1 - me.eps:g} at layers {me.first_layer}..{L}.", "",
              "![descending frequency](plots/descending.png)", ""]
    rows = []
    for k in models:
        m, t = models[k]["clean"], models[k].get("train")
        rows.append([_lab(k), _f(m["mse"][-1], 4), _f(m["mse_hole"][-1], 4),
                     f"{_f(m['psnr'][-1])} ± {_f(m['psnr_std'][-1])}", _f(m["ssim"][-1], 3),
                     "-" if t is None else str(t["best_epoch"]), "-" if t is None else f"{t['seconds']:.0f}"])
    m0 = models["untrained"]["clean"]
    rows.append(["masked input", _f(m0["mse"][0], 4), _f(m0["mse_hole"][0], 4),
                 f"{_f(m0['psnr'][0])} ± {_f(m0['psnr_std'][0])}", _f(m0["ssim"][0], 3), "-", "-"])
    lines += ["## Final layer, clean test set", "",
              _table(["network", "MSE", "MSE in the hole", "PSNR dB mean ± std", "SSIM", "best epoch", "train s"],
                     rows), "",
              "![clean | masked | final layer of each network](plots/grid_final.png)", ""]
    un = {k: models[k]["under_noise"] for k in models}
    lines += [f"## Under noise between layers (sigma = {ev.noise_sigma:g})", "",
              _per_layer_table(un, ["psnr", "desc_x", "desc_z"], ["PSNR dB", "desc. grad_x", "desc. grad_z"])
              .replace("| 0 (input) |", "| 0 (input, perturbed) |"), "",
              "Row 0 is the initial point after its noise; the descending columns start at layer 1.", "",
              "![descending frequency under noise](plots/descending_noise.png)", ""]
    sw = {k: models[k]["sweep"] for k in models}
    rows = []
    first = next(iter(sw.values()))
    for i, p in enumerate(first["p"]):
        rows.append([f"{p:g}", "exact" if p == 0 else _f(first["psnr_input"][i])] + [_f(sw[k]["psnr"][i]) for k in sw]
                    + [_f(sw[k]["ssim"][i], 3) for k in sw]
                    + [f"{_f(sw[k]['min_desc_x'][i])} / {_f(sw[k]['min_desc_z'][i])}" for k in trained])
    lines += ["## Perturbation sweep", "",
              _table(["p", "PSNR of x~ itself"] + [f"PSNR {_lab(k)}" for k in sw] + [f"SSIM {_lab(k)}" for k in sw]
                     + [f"min desc. x / z {_lab(k)}" for k in trained], rows), "",
              f"Final layer against the clean image. min desc. = the lowest descending frequency of ||grad_x f|| / "
              f"||grad_z f|| over layers {me.first_layer}..{L}.", "",
              "![perturbation sweep](plots/sweep.png)", "",
              f"![clean | perturbed and masked (p = {results['grid_p']:g}) | final layer of each network]"
              "(plots/grid_perturbed.png)", ""]
    lines += ["## Reconstructions per layer", ""]
    for k in models:
        lines += [f"![{_lab(k)}: clean | masked | layers 1..{L}](plots/grid_{k}.png)", ""]
    c = models["constrained"]["train"]
    lines += ["## Training", "",
              "Multipliers of the constrained network at the end (layers "
              + ", ".join(map(str, c["constrained_layers"])) + "): grad_x "
              + ", ".join(_f(v, 4) for v in c["multipliers"]["grad_x"]) + "; grad_z "
              + ", ".join(_f(v, 4) for v in c["multipliers"]["grad_z"]) + ". Largest during training: grad_x "
              + ", ".join(_f(v, 4) for v in c["max_multipliers"]["grad_x"]) + "; grad_z "
              + ", ".join(_f(v, 4) for v in c["max_multipliers"]["grad_z"]) + ".", "",
              _table(["network"] + [f"mu_{l}" for l in range(1, L + 1)] + [f"lambda_{l}" for l in range(1, L + 1)],
                     [[_lab(k)] + [_f(v, 3) for v in models[k]["train"]["mu"]]
                      + [_f(v, 3) for v in models[k]["train"]["lam"]] for k in trained]), "",
              "![validation loss](plots/val_loss.png)", "",
              "Glow-inverse overflows: images whose decoded value in some layer was not finite or exceeded "
              "1e3 in magnitude; they skip that layer's proximal step (output = the clamped gradient step). "
              "Training counts include the validation passes.", "",
              _table(["network", "training", "clean test", "under noise", "sweep (per p)"],
                     [[_lab(k), str(models[k]["train"]["overflows"]) if "train" in models[k] else "-",
                       str(models[k]["clean"]["overflows"]), str(models[k]["under_noise"]["overflows"]),
                       ", ".join(map(str, models[k]["sweep"]["overflows"]))] for k in models]), ""]
    if g:
        hist = g.get("history") or []
        lines += [f"Glow pretraining: {len(hist)} epochs, training bits/dim "
                  + (f"{_f(hist[0]['bits_per_dim'], 3)} -> {_f(hist[-1]['bits_per_dim'], 3)}" if hist else "-")
                  + f", test {_f(g.get('test_bits_per_dim'), 3)} bits/dim (bin centres, {d.bits}-bit).", ""]
    lines += base._report_tail(timing, "Checkpoints (the pretrained Glow and the three networks) stay in "
                                       "`checkpoints/` (ignored by git); `--resume` reuses them.")
    atomic_write_text("\n".join(lines), os.path.join(out, "report.md"))


# ---------------------------------------------------------------- commands

_preset_arg = base._preset_type(I.get_preset)


def _train(preset, variant, data, run_dir, glow, args, device, progress):
    with base._resume_errors(run_dir):
        return I.train_variant(preset, variant, data, run_dir, glow, seed=args.seed, device=device,
                               resume=args.resume, progress=progress)


def cmd_train(args):
    preset = base._apply_overrides(args.preset, args)
    device = base._device(args.device)
    variant = base.MODES[args.mode]
    progress = not args.quiet
    os.makedirs(args.out, exist_ok=True)
    data = prepare_data(preset, args.data_cache, device)
    glow, _ = _glow(preset, data, os.path.join(args.out, "glow.pt"), args, device, progress)
    _, summary, _ = _train(preset, variant, data, args.out, glow, args, device, progress)
    print(f"trained {_lab(variant)} GLOW-Prox ({preset.name}): best epoch {summary['best_epoch']}, validation MSE "
          f"{_f(summary['best_val_loss'], 5)}; checkpoints in {args.out}")
    return 0


def cmd_eval(args):
    device = base._device(args.device)
    model, preset, variant = load_model(args.checkpoint, args.preset, device)
    data = prepare_data(preset, args.data_cache, device)
    ev = preset.evaluation
    res = evaluate_model(model, data, ev, args.seed, preset.method.first_layer)
    m = res["clean"]
    print(f"{_lab(variant)} GLOW-Prox ({preset.name}), {m['count']} test images")
    print(_table(["layer", "MSE", "PSNR dB", "SSIM", "desc. grad_x", "desc. grad_z"],
                 [[str(l), _f(m["mse"][l], 4), _f(m["psnr"][l]), _f(m["ssim"][l], 3),
                   "" if l == 0 else _f(m["desc_x"][l - 1]), "" if l == 0 else _f(m["desc_z"][l - 1])]
                  for l in range(len(m["mse"]))], escape=False))
    sw = res["sweep"]
    print("perturbation sweep")
    print(_table(["p", "PSNR of x~", "final PSNR", "final SSIM"],
                 [[f"{p:g}", _f(a), _f(b), _f(c, 3)] for p, a, b, c in
                  zip(sw["p"], sw["psnr_input"], sw["psnr"], sw["ssim"])], escape=False))
    if args.out:
        atomic_write_json(_json_safe({"checkpoint": args.checkpoint, "variant": variant, "preset": preset.name,
                                      **res}), os.path.join(args.out, "eval.json"))
        I.plot_layers({variant: m}, os.path.join(args.out, "layers.png"))
        I.plot_sweep({variant: sw}, os.path.join(args.out, "sweep.png"))
        I.layer_grid(os.path.join(args.out, "grid.png"), model, data, ev, title=f"{_lab(variant)}")
        print(f"wrote {args.out}/eval.json, layers.png, sweep.png, grid.png")
    return 0


def cmd_reproduce(args):
    t_start = time.perf_counter()
    preset, device, out = base._start_report("inpaint", args)
    progress = not args.quiet
    timing = {}

    t0 = time.perf_counter()
    data = prepare_data(preset, args.data_cache, device)
    timing["data_seconds"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    glow, glow_info = _glow(preset, data, os.path.join(out, "checkpoints", "glow", "glow.pt"), args, device,
                            progress)
    timing["glow_pretrain_seconds"] = time.perf_counter() - t0
    resumed = bool(glow_info and glow_info.get("reused"))

    trained, histories = {}, {}
    for variant in I.VARIANTS:
        run_dir = os.path.join(out, "checkpoints", variant)
        resumed |= args.resume and os.path.isfile(os.path.join(run_dir, "last.pt"))
        t0 = time.perf_counter()
        model, summary, history = _train(preset, variant, data, run_dir, glow, args, device, progress)
        timing[f"train_{variant}_seconds"] = time.perf_counter() - t0
        trained[variant] = (model, summary)
        histories[_lab(variant)] = history
        base._copy_logs(run_dir, os.path.join(out, "runs", variant))
    untrained = I.build_model(preset, data.mask, glow, args.seed).to(device).eval()

    t0 = time.perf_counter()
    ev, first = preset.evaluation, preset.method.first_layer
    nets = {k: m for k, (m, _) in trained.items()} | {"untrained": untrained}
    models = {}
    for k, model in tqdm(nets.items(), desc="evaluate", disable=not progress, leave=False):
        models[k] = evaluate_model(model, data, ev, args.seed, first)
        if k in trained:
            models[k]["train"] = trained[k][1]
    timing["evaluate_seconds"] = time.perf_counter() - t0

    claims = assess_claims(models, first, preset.method.eps)

    t0 = time.perf_counter()
    pdir = os.path.join(out, "plots")
    labelled = {_lab(k): v for k, v in models.items()}
    I.plot_layers({k: v["clean"] for k, v in labelled.items()}, os.path.join(pdir, "layers.png"))
    I.plot_descending({_lab(k): models[k]["clean"] for k in trained}, os.path.join(pdir, "descending.png"),
                      "clean")
    I.plot_descending({_lab(k): models[k]["under_noise"] for k in trained}, os.path.join(pdir, "descending_noise.png"),
                      f"noise {ev.noise_sigma:g}")
    I.plot_sweep({k: v["sweep"] for k, v in labelled.items()}, os.path.join(pdir, "sweep.png"))
    from .evaluate import plots

    plots.plot_history(histories, os.path.join(pdir, "val_loss.png"))
    L = preset.model.num_layers
    for k, model in nets.items():
        I.layer_grid(os.path.join(pdir, f"grid_{k}.png"), model, data, ev,
                     title=f"{_lab(k)}: clean | masked | layers 1..{L}")
    n = ev.grid_images
    y, x = data.pairs("test")
    finals = [(_lab(k).split(" (")[0], I.run_iterates(m, y[:n], batch_size=ev.batch_size)[0][-1])
              for k, m in nets.items()]
    I.save_grid(os.path.join(pdir, "grid_final.png"), [("clean", x[:n]), ("masked", y[:n])] + finals,
                "final layer of each network")
    grid_p = max(ev.ps)
    xp = I.perturb(x[:n], grid_p, torch.Generator().manual_seed(args.seed * 1000 + len(ev.ps)))
    yp = data.measure(xp)
    finals = [(_lab(k).split(" (")[0], I.run_iterates(m, yp, batch_size=ev.batch_size)[0][-1])
              for k, m in nets.items()]
    I.save_grid(os.path.join(pdir, "grid_perturbed.png"), [("clean", x[:n]), (f"x~ masked, p={grid_p:g}", yp)]
                + finals, f"perturbation p = {grid_p:g}: final layer of each network")
    timing["plots_seconds"] = time.perf_counter() - t0
    timing["total_seconds"] = time.perf_counter() - t_start
    timing["resumed"] = bool(resumed)

    results = {"format": I.INPAINT_FORMAT, "preset": preset.to_dict(), "seed": args.seed,
               "machine": base._machine(),
               "data": {"train": int(data.train.shape[0]), "val": int(data.val.shape[0]),
                        "test": int(data.test.shape[0]), "info": data.info, "config_key": data.config.key()},
               "glow": glow_info, "timing": timing, "claims": claims, "grid_p": grid_p, "models": models}
    write_report(out, preset, results, base._report_command("inpaint", preset, args, out))
    return base._finish_report(out, results)


# ---------------------------------------------------------------- parser

def add_parsers(sub, rsub):
    """Add ``inpaint {train,eval}`` to the top-level sub-parsers ``sub`` and ``inpaint`` to the
    ``reproduce`` sub-parsers ``rsub`` of :func:`sdu_ext.cli.build_parser`."""
    presets = ", ".join(I.PRESETS)
    seeds = "the Glow, the training and the evaluation draws"
    evaluates = ("inpaint", _preset_arg, "write JSON, plots and an image grid to this directory")
    sub.metavar = "{lista,inpaint,reproduce}"
    rsub.metavar = "{lista,inpaint}"
    inp = sub.add_parser("inpaint", help="train or evaluate one GLOW-Prox inpainting network")
    inp.set_defaults(run=base._usage(inp))
    isub = inp.add_subparsers(dest="action", metavar="{train,eval}")
    p = isub.add_parser("train", help="train one GLOW-Prox network (pretrains its Glow first; resumable)")
    p.add_argument("--preset", type=_preset_arg, default=I.get_preset("quick"), help=f"one of {presets}")
    p.add_argument("--mode", choices=sorted(base.MODES), default="constrained",
                   help="constrained (descent constraints + noise), standard (= unconstrained) or noisy "
                        "(standard trained with noise)")
    p.add_argument("--out", required=True, help="run directory: checkpoints, logs and the pretrained Glow (glow.pt)")
    p.add_argument("--glow", default=None, metavar="FILE",
                   help="reuse this pretrained Glow (a glow.pt of the same preset and seed) instead of pretraining")
    p.add_argument("--epochs", type=int, default=None, help="override the preset's number of training epochs")
    p.add_argument("--resume", action="store_true", help="continue from --out's last.pt")
    base._common(p, seeds)
    p.set_defaults(run=cmd_train)
    p = isub.add_parser("eval", help="per-layer metrics and the perturbation sweep of a checkpoint")
    base._common(p, seeds, evaluates)
    p.set_defaults(run=cmd_eval)

    p = rsub.add_parser("inpaint", help="constrained vs standard vs standard-with-noise GLOW-Prox")
    p.add_argument("--preset", type=_preset_arg, default=I.get_preset("quick"), help=f"one of {presets}")
    p.add_argument("--out", default=None, help="report directory (default: results/inpaint_<preset>)")
    p.add_argument("--epochs", type=int, default=None, help="override the preset's number of training epochs")
    p.add_argument("--resume", action="store_true",
                   help="continue killed training runs in --out and reuse finished ones")
    base._common(p, seeds)
    p.set_defaults(run=cmd_reproduce)
