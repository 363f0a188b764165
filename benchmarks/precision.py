"""What reduced precision costs: LISTA trained with float32, bfloat16 autocast and (CUDA) TF32 GEMMs.

Settings (the same run otherwise: data, initialisation, seeds, epochs)
    float32     ``TrainConfig()``: float32 everywhere (``matmul_precision="highest"``)
    bf16        ``TrainConfig(autocast="bfloat16")``: the model's forward under autocast
                (GEMMs and fused ops in bfloat16), loss and constraints in float32
    tf32        ``TrainConfig(matmul_precision="high")``: float32 GEMMs in TF32 (CUDA only;
                a CPU without bf16 matrix units computes the same as float32)

The run: constrained + log-gradient noise LISTA training (SPEC section 4; distance residual,
mean_ratio, eps 0.05, sigma 1), ISTA-initialised, n 100, m 200, L 10, 2048 training and 512 validation samples of
10%-sparse codes, batch 256, Adam lr 1e-3, ``--epochs`` epochs, seeds 0..``--seeds``-1 (the seed
draws the shuffles and the noise). Reported
per setting: the final noise-free validation NMSE (dB) of the last layer, mean +- std over seeds,
its difference to float32 (per seed, then mean +- std), and the median seconds per epoch
with its ratio to float32's. A difference within the spread of the seeds is reported as such.

Usage
    python benchmarks/precision.py [--device cpu|cuda] [--epochs 30] [--seeds 3] [--readme]
    python benchmarks/precision.py --summary [--readme]     # re-read the CSV
"""

from __future__ import annotations

import argparse
import math
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
from sdu_ext.models import LISTA, log_gradient_noise  # noqa: E402
from sdu_ext.train import DescentConstraints, PrimalDualTrainer, TrainConfig  # noqa: E402

N, M, L, N_TRAIN, N_VAL, BATCH = 100, 200, 10, 2048, 512, 256
SETTINGS = {"float32": {"matmul_precision": "highest"}, "bf16": {"autocast": "bfloat16"},
            "tf32": {"matmul_precision": "high"}}


def make_data(device: str):
    """Dictionary (n, m) and (x, y*) training/validation pairs of 10%-sparse codes, seed 0."""
    D, (train, val) = sparse_coding(N, M, (N_TRAIN, N_VAL), device)
    return D, train, val


def nmse_db(trainer, val) -> float:
    """10 log10( sum ||y_L - y*||^2 / sum ||y*||^2 ) over the validation set, noise-free."""
    loss = trainer.evaluate(val)["loss"]  # mean of 1/2 ||y_L - y*||^2
    return 10 * math.log10(2 * loss / float(val[1].pow(2).sum(dim=1).mean()))


def train_one(setting: str, seed: int, epochs: int, device: str, data) -> dict[str, Any]:
    D, train, val = data
    torch.manual_seed(seed)
    model = LISTA(D, alpha=0.1, num_layers=L, init="ista")
    noise = log_gradient_noise(model, sigma=1.0)
    cfg = TrainConfig(epochs=epochs, batch_size=BATCH, lr=1e-3, lr_dual=1e-2, eps=0.05, seed=seed, device=device,
                      restore_best=False, **SETTINGS[setting])
    trainer = PrimalDualTrainer(model, train, val, cfg, DescentConstraints("distance"), noise=noise)
    trainer.fit()
    seconds = statistics.median(row["time_s"] for row in trainer.history)
    return {"setting": setting, "seed": seed, "epochs": epochs, "nmse_db": nmse_db(trainer, val),
            "epoch_s": seconds}


def run(args) -> list[dict[str, Any]]:
    info = machine_info(args.device, sdu_ext.build_info())
    settings = [s for s in SETTINGS if s != "tf32" or args.device == "cuda"]
    data = make_data(args.device)
    rows = []
    jobs = [(seed, s) for seed in range(args.seeds) for s in settings]  # interleaved: load drifts evenly
    for seed, setting in tqdm(jobs, desc="precision", dynamic_ncols=True):
        rows.append({**info, "threads": torch.get_num_threads(),
                     **train_one(setting, seed, args.epochs, args.device, data)})
    return rows


def _spread(xs):
    return (statistics.mean(xs), statistics.stdev(xs) if len(xs) > 1 else float("nan"))


def table(rows) -> str:
    by = {(r["setting"], int(r["seed"])): r for r in rows}
    seeds = sorted({int(r["seed"]) for r in rows})
    head = ("| setting | final val NMSE dB (mean ± std) | difference to float32 dB | s/epoch (median over seeds) "
            "| time / float32 | verdict |")
    lines = [head, "|" + " --- |" * (head.count("|") - 1)]
    base = [float(by[("float32", s)]["nmse_db"]) for s in seeds]
    base_t = statistics.median(float(by[("float32", s)]["epoch_s"]) for s in seeds)
    base_sd = _spread(base)[1]
    for setting in SETTINGS:
        if (setting, seeds[0]) not in by:
            continue
        vals = [float(by[(setting, s)]["nmse_db"]) for s in seeds]
        diffs = [v - b for v, b in zip(vals, base)]
        t = statistics.median(float(by[(setting, s)]["epoch_s"]) for s in seeds)
        m, sd = _spread(vals)
        dm, dsd = _spread(diffs)
        spread = max(dsd, base_sd)  # nan with one seed
        if setting == "float32":
            verdict = "reference"
        elif math.isnan(spread):
            verdict = "inconclusive (one seed)"
        elif abs(dm) <= 2 * spread:
            verdict = "no difference beyond 2x the seed spread"
        else:
            verdict = f"{'worse' if dm > 0 else 'better'} by {abs(dm):.2f} dB"
        lines.append(f"| {setting} | {m:.2f} ± {sd:.2f} | {dm:+.3f} ± {dsd:.3f} | {t:.2f} | {t / base_t:.2f}x "
                     f"| {verdict} |")
    return "\n".join(lines)


def header(rows) -> str:
    r = rows[0]
    return (f"Machine: {r['cpu_model']} ({r['device_name']}), torch {r['torch']}, date {r['date'][:10]}, git "
            f"{r['git']}, {r['threads']} threads; {r['epochs']} epochs, seeds "
            f"{', '.join(sorted({str(x['seed']) for x in rows}))}.")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    ap.add_argument("--summary", action="store_true", help="re-read the CSV instead of running")
    ap.add_argument("--readme", action="store_true", help="also rewrite the README's generated section")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    path = args.out / f"precision_{args.device}.csv"
    if args.summary:
        rows = read_rows(path)
    else:
        t0 = time.perf_counter()
        rows = run(args)
        print(f"{time.perf_counter() - t0:.0f} s")
        write_rows(rows, path)
    body = header(rows) + "\n\n" + table(rows)
    (args.out / f"precision_{args.device}.md").write_text("# Precision benchmark\n\n" + body + "\n")
    print(body)
    if args.readme:
        update_readme_section(f"precision:{args.device}", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
