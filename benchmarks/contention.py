"""Epoch time of the quick LISTA preset on a busy machine: the CLI's default threads against `--threads 1`.

On a machine whose cores other processes keep busy, an intra-op thread pool as wide as the
machine stalls at every parallel region's barrier, waiting for a thread that is descheduled.
The CLI therefore picks its default thread count from the idle cores
(``sdu_ext.train.threads.thread_choice``: available cores less the 1-minute load average).
This benchmark measures what that buys.

Configurations (each one ``sdu-ext lista train --preset quick --mode constrained --epochs E``,
a fresh process, interleaved over ``--rounds``)
    cli default   no ``--threads``: the CLI's choice (the chosen count is recorded)
    all cores     ``--threads <cores>``: torch's own default, every core
    1 thread      ``--threads 1``

Background
    busy          ``--busy`` processes spinning on the CPU (pure Python loops), started
                  ``--warm`` seconds before the first measurement so that the 1-minute load
                  average has risen, and kept running to the end
    idle          the same measurements without them (``--idle``; skipped by default)

The figure is the median epoch time (the trainer's own per-epoch ``time_s``, epochs 2..E so that
the first epoch's warm-up is excluded) over all epochs of all rounds, and its ratio to ``1 thread``
measured in the same background. Target (issue 13): cli default within 1.3x of 1 thread.

Usage
    python benchmarks/contention.py [--busy 2] [--epochs 4] [--rounds 2] [--idle] [--readme]
    python benchmarks/contention.py --summary [--readme]     # re-read the CSV
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import cpu_model, read_rows, update_readme_section, write_rows  # noqa: E402

CONFIGS = ("cli default", "all cores", "1 thread")
SPIN = "while True:\n    pass\n"


def _cli() -> list[str]:
    """The ``sdu-ext`` command of this interpreter (its venv's script, else ``-m sdu_ext``)."""
    script = Path(sys.executable).with_name("sdu-ext")
    return [str(script)] if script.exists() else [sys.executable, "-m", "sdu_ext"]


def _threads_arg(config: str, cores: int) -> list[str]:
    return {"cli default": [], "all cores": ["--threads", str(cores)], "1 thread": ["--threads", "1"]}[config]


def train_once(config: str, epochs: int, cores: int, cache: str) -> dict:
    """One training process; returns its per-epoch times, the thread count and the load at start."""
    out = tempfile.mkdtemp(prefix="sdu_contention_")
    try:
        load = os.getloadavg()[0]
        cmd = _cli() + ["lista", "train", "--preset", "quick", "--mode", "constrained", "--epochs", str(epochs),
                        "--out", out, "--overwrite", "--quiet", "--data-cache", cache] + _threads_arg(config, cores)
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
        with open(os.path.join(out, "history.json")) as f:
            times = [float(r["time_s"]) for r in json.load(f)["history"]]
        chosen = re.search(r"using (\d+) torch thread", proc.stdout + proc.stderr)
        threads = int(chosen.group(1)) if chosen else int(_threads_arg(config, cores)[1])
        return {"times": times, "threads": threads, "load1": load}
    finally:
        shutil.rmtree(out, ignore_errors=True)


def measure(background: str, args, cores: int, cache: str) -> list[dict]:
    spinners = []
    try:
        if background == "busy":
            spinners = [subprocess.Popen([sys.executable, "-c", SPIN]) for _ in range(args.busy)]
            print(f"[{background}] {args.busy} spinning processes; waiting {args.warm:.0f} s for the load average",
                  flush=True)
            time.sleep(args.warm)
        runs = {c: [] for c in CONFIGS}
        for r in range(args.rounds):
            for config in CONFIGS:
                res = train_once(config, args.epochs, cores, cache)
                runs[config].append(res)
                print(f"[{background}] round {r + 1}/{args.rounds} {config:<11} threads {res['threads']} "
                      f"load {res['load1']:.1f} epochs(s) " + " ".join(f"{t:.2f}" for t in res["times"]), flush=True)
    finally:
        for p in spinners:
            p.kill()
            p.wait()
    rows = []
    for config in CONFIGS:
        epochs = [t for res in runs[config] for t in res["times"][1:]]
        rows.append({"background": background, "busy": args.busy if background == "busy" else 0, "config": config,
                     "threads": "/".join(sorted({str(res["threads"]) for res in runs[config]})),
                     "median_s": statistics.median(epochs), "min_s": min(epochs), "max_s": max(epochs),
                     "epochs_timed": len(epochs),
                     "load_min": min(res["load1"] for res in runs[config]),
                     "load_max": max(res["load1"] for res in runs[config]),
                     "cores": cores, "cpu_model": cpu_model(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())})
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| background | configuration | threads | median epoch (s) | min-max (s) | vs 1 thread | load at start |",
             "|---|---|---|---|---|---|---|"]
    for bg in dict.fromkeys(r["background"] for r in rows):
        part = [r for r in rows if r["background"] == bg]
        one = next(float(r["median_s"]) for r in part if r["config"] == "1 thread")
        for r in part:
            label = f"{bg} ({r['busy']} spinning)" if bg == "busy" else bg
            lines.append(f"| {label} | {r['config']} | {r['threads']} | {float(r['median_s']):.2f} | "
                         f"{float(r['min_s']):.2f}-{float(r['max_s']):.2f} | {float(r['median_s']) / one:.2f}x | "
                         f"{float(r['load_min']):.1f}-{float(r['load_max']):.1f} |")
    r = rows[0]
    return (f"Machine: {r['cpu_model']}, {r['cores']} available cores, {r['date']}. Quick LISTA preset, constrained "
            f"network, median epoch time over {r['epochs_timed']} epochs (the first epoch of each process excluded).\n\n"
            + "\n".join(lines))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--busy", type=int, default=2, help="spinning background processes")
    ap.add_argument("--warm", type=float, default=50.0, help="seconds of background load before measuring")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--idle", action="store_true", help="also measure without background load (first)")
    ap.add_argument("--out", type=Path, default=HERE / "results")
    ap.add_argument("--summary", action="store_true", help="re-read the CSV instead of running")
    ap.add_argument("--readme", action="store_true", help="also rewrite the README's generated section")
    args = ap.parse_args(argv)
    path = args.out / "contention_cpu.csv"
    if args.summary:
        rows = read_rows(path)
    else:
        sys.path.insert(0, str(HERE.parent))
        from sdu_ext.train.threads import available_cores

        cores = available_cores()
        cache = os.environ.get("SDU_EXT_CACHE") or os.path.expanduser("~/.cache/sdu_ext")
        rows = (measure("idle", args, cores, cache) if args.idle else []) + measure("busy", args, cores, cache)
        write_rows(rows, path)
    body = table(rows)
    (args.out / "contention_cpu.md").write_text("# Contention benchmark\n\n" + body + "\n")
    print(body)
    if args.readme:
        update_readme_section("contention:cpu", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
