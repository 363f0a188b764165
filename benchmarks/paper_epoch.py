"""Seconds per epoch of the ``paper`` LISTA preset's training (constrained + noise), per step configuration.

The preset's network, noise, constraints and ``TrainConfig`` (batch 512, n 1024, m 1228, L 10,
dual step once per epoch over the training set, validation every epoch), trained on stand-in data
of the preset's sizes (``--n-train`` 50,000 and ``--n-val`` 5,000 10%-sparse codes of a random
dictionary: generating the preset's certified patch data set takes far longer than an epoch, and
the time of an epoch does not depend on the values). Configurations, one after another:

    eager           ``TrainConfig`` as the preset sets it (finiteness read after every step)
    eager_k64       ``check_every=64``: no host read inside the steps
    compiled        ``check_every=64, compile="reduce-overhead"`` (CUDA graphs) on CUDA,
                    ``compile="default"`` on CPU

Reported: the median epoch time over the epochs after the first (which pays compilation and
warm-up), the first epoch's time, and the preset's 5000 epochs at the median rate.

Usage
    python benchmarks/paper_epoch.py [--device cuda] [--epochs 3] [--n-train 50000] [--readme]
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_info, read_rows, sparse_coding, update_readme_section, write_rows  # noqa: E402

import sdu_ext  # noqa: E402
from sdu_ext.experiments import lista  # noqa: E402
from sdu_ext.presets import get_preset  # noqa: E402
from sdu_ext.train import DescentConstraints, PrimalDualTrainer  # noqa: E402

CONFIGS = ("eager", "eager_k64", "compiled")


def stand_in_data(preset, n_train: int, n_val: int, device: str):
    """A unit-column dictionary (n, m) and (x, y*) pairs of 10%-sparse codes, seed 0."""
    D, (train, val) = sparse_coding(preset.data.n, preset.data.m, (n_train, n_val), device)
    return D, train, val


def run_config(name: str, args, data) -> dict[str, Any]:
    preset = get_preset("paper")
    D, train, val = data
    model = lista.build_model(preset, D, preset.data.alpha, seed=0)
    noise = lista.build_noise(preset, model, 0, args.device)
    mc = preset.method
    extra = {}
    if name != "eager":
        extra["check_every"] = 64
    if name == "compiled":
        extra["compile"] = "reduce-overhead" if args.device == "cuda" else "default"
    cfg = dataclasses.replace(preset.train, epochs=args.epochs, device=args.device, seed=0, restore_best=False,
                              **extra)
    trainer = PrimalDualTrainer(model, train, val, cfg, DescentConstraints(mc.residual, mc.form, eps=mc.eps),
                                noise=noise)
    t0 = time.perf_counter()
    trainer.fit()
    wall = time.perf_counter() - t0
    times = [float(r["time_s"]) for r in trainer.history]
    rate = statistics.median(times[1:]) if len(times) > 1 else times[0]
    return {"config": name, "compile": extra.get("compile", ""), "check_every": cfg.check_every,
            "epochs": args.epochs, "n_train": train[0].shape[0], "n_val": val[0].shape[0],
            "batch_size": cfg.batch_size, "first_epoch_s": times[0], "epoch_s": rate,
            "steps_per_s": -(-train[0].shape[0] // cfg.batch_size) / rate, "preset_hours": rate * 5000 / 3600,
            "wall_s": wall}


def table(rows) -> str:
    head = "| configuration | s/epoch (median after the first) | first epoch s | steps/s | 5000 epochs (h) |"
    lines = [head, "|" + " --- |" * (head.count("|") - 1)]
    for r in rows:
        lines.append(f"| {r['config']}{' (' + r['compile'] + ')' if r['compile'] else ''} | {float(r['epoch_s']):.2f} "
                     f"| {float(r['first_epoch_s']):.2f} | {float(r['steps_per_s']):.3g} "
                     f"| {float(r['preset_hours']):.1f} |")
    return "\n".join(lines)


def header(rows) -> str:
    r = rows[0]
    return (f"Machine: {r['cpu_model']} ({r['device_name']}), torch {r['torch']}, date {r['date'][:10]}, git "
            f"{r['git']}; paper preset, {r['n_train']} training and {r['n_val']} validation samples (stand-in "
            f"data), batch {r['batch_size']}, {r['epochs']} epochs per configuration.")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--n-train", type=int, default=50_000)
    ap.add_argument("--n-val", type=int, default=5_000)
    ap.add_argument("--configs", nargs="+", choices=CONFIGS, default=list(CONFIGS))
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    ap.add_argument("--summary", action="store_true", help="re-read the CSV instead of running")
    ap.add_argument("--readme", action="store_true", help="also rewrite the README's generated section")
    args = ap.parse_args(argv)
    path = args.out / f"paper_epoch_{args.device}.csv"
    if args.summary:
        rows = read_rows(path)
    else:
        info = machine_info(args.device, sdu_ext.build_info())
        data = stand_in_data(get_preset("paper"), args.n_train, args.n_val, args.device)
        rows = [{**info, **run_config(name, args, data)}
                for name in tqdm(args.configs, desc="paper_epoch", dynamic_ncols=True)]
        write_rows(rows, path)
    body = header(rows) + "\n\n" + table(rows)
    (args.out / f"paper_epoch_{args.device}.md").write_text("# Paper preset: seconds per epoch\n\n" + body + "\n")
    print(body)
    if args.readme:
        update_readme_section(f"paper_epoch:{args.device}", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
