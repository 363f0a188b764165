"""The ``sdu-ext`` command (also ``python -m sdu_ext``): argument parsing only.

    sdu-ext lista train       --preset quick --mode constrained --out runs/c [--resume | --overwrite]
    sdu-ext lista eval        --checkpoint runs/c [--preset quick] [--out DIR]
    sdu-ext lista robustness  --checkpoint runs/c [--preset quick] [--out DIR]
    sdu-ext inpaint train     --preset quick --mode constrained --out runs/g [--glow FILE]
    sdu-ext inpaint eval      --checkpoint runs/g [--preset quick] [--out DIR]
    sdu-ext reproduce lista   --preset quick [--out runs/lista_quick] [--resume | --overwrite] [--jobs N]
                              [--time-budget S]
    sdu-ext reproduce inpaint --preset quick [--out runs/inpaint_quick] [--resume | --overwrite] [--jobs N]

Every command calls an entry point of :mod:`sdu_ext.experiments.lista` or
:mod:`sdu_ext.experiments.inpaint` with a :class:`~sdu_ext.experiments.common.RunOptions`.
torch and the experiments are imported only when a command runs, so ``--help`` answers at
once. Errors print one line ``sdu-ext: error: ...`` (exit status 2), warnings one line
``sdu-ext: warning: ...`` each, and Ctrl-C one line that says how to continue (exit status 130).
"""
import argparse
import shlex
import sys
import warnings
from typing import Callable, List, Optional, Sequence

__all__ = ["PRESET_NAMES", "VARIANT_NAMES", "build_parser", "main"]

# The names of sdu_ext.presets.PRESETS / INPAINT_PRESETS and VARIANTS, here so that building
# the parser imports no torch (a test keeps them equal).
PRESET_NAMES = {"lista": ("quick", "synthetic", "paper", "tiny"), "inpaint": ("quick", "paper", "tiny")}
VARIANT_NAMES = ("constrained", "constrained_nonoise", "standard", "noisy")
SEEDS = {"lista": "the initial weights, training and evaluation draws",
         "inpaint": "the Glow, the training and the evaluation draws"}


def _preset_type(kind: str) -> Callable[[str], str]:
    """The argparse ``type`` of ``--preset``: a preset name of ``kind`` (a usage error otherwise)."""
    names = PRESET_NAMES[kind]

    def preset(name: str) -> str:
        if name not in names:
            raise argparse.ArgumentTypeError(f"preset: expected one of {', '.join(map(repr, names))}, got {name!r}")
        return name
    return preset


def _options(args: argparse.Namespace):
    """The :class:`~sdu_ext.experiments.common.RunOptions` of parsed arguments."""
    from .experiments.common import RunOptions

    return RunOptions(out=args.out, seed=args.seed, device=args.device, progress=not args.quiet,
                      data_cache=args.data_cache, resume=getattr(args, "resume", False),
                      overwrite=getattr(args, "overwrite", False), epochs=getattr(args, "epochs", None),
                      compile=getattr(args, "compile", None),
                      threads=args.threads, time_budget=getattr(args, "time_budget", None),
                      jobs=getattr(args, "jobs", 1))


# ---------------------------------------------------------------- commands

def _lista_train(args):
    from .experiments import lista
    return lista.train(args.preset, args.mode, _options(args))


def _lista_eval(args):
    from .experiments import lista
    return lista.evaluate(args.checkpoint, args.preset, _options(args))


def _lista_robustness(args):
    from .experiments import lista
    return lista.robustness(args.checkpoint, args.preset, _options(args))


def _lista_reproduce(args):
    from .experiments import lista
    return lista.reproduce(args.preset, _options(args))


def _inpaint_train(args):
    from .experiments import inpaint
    return inpaint.train(args.preset, args.mode, _options(args), glow=args.glow)


def _inpaint_eval(args):
    from .experiments import inpaint
    return inpaint.evaluate(args.checkpoint, args.preset, _options(args))


def _inpaint_reproduce(args):
    from .experiments import inpaint
    return inpaint.reproduce(args.preset, _options(args))


# ---------------------------------------------------------------- parser

def _common(p: argparse.ArgumentParser, kind: str) -> None:
    """The options of every command of ``kind`` ("lista" or "inpaint")."""
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    p.add_argument("--seed", type=int, default=0,
                   help=f"seeds {SEEDS[kind]} (default: 0); the data set is fixed by the preset")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: the available cores less the 1-minute load average, "
                        "at least 1; printed at the start)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--data-cache", default=None, metavar="DIR",
                   help="data set cache directory (default: $SDU_EXT_CACHE or ~/.cache/sdu_ext)")


def _run_options(p: argparse.ArgumentParser, kind: str, out_help: str, out_required: bool) -> None:
    """The options of a command that trains: --preset, --out, --epochs, --resume / --overwrite."""
    p.add_argument("--preset", type=_preset_type(kind), default="quick",
                   help=f"one of {', '.join(PRESET_NAMES[kind])} (default: quick)")
    p.add_argument("--out", required=out_required, default=None, help=out_help)
    p.add_argument("--epochs", type=int, default=None, help="override the preset's number of training epochs")
    p.add_argument("--compile", default=None, metavar="MODE",
                   help="run the training step under torch.compile in this mode: default, reduce-overhead (CUDA "
                        "graphs on a GPU), max-autotune or max-autotune-no-cudagraphs (default: eager)")
    again = p.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true",
                       help="continue the killed training runs in --out and reuse finished ones")
    again.add_argument("--overwrite", action="store_true", help="replace a previous run in --out")
    _common(p, kind)


def _eval_options(p: argparse.ArgumentParser, kind: str, out_help: str) -> None:
    """The options of a command that evaluates a checkpoint."""
    p.add_argument("--checkpoint", required=True,
                   help=f"a best.pt/last.pt written by `sdu-ext {kind} train`, or its directory")
    p.add_argument("--preset", type=_preset_type(kind), default=None,
                   help="preset the checkpoint was trained with (default: the one stored in it)")
    p.add_argument("--out", default=None, help=out_help)
    _common(p, kind)


def _time_budget(p: argparse.ArgumentParser) -> None:
    p.add_argument("--time-budget", type=float, default=None, metavar="SECONDS",
                   help="stop training in time to evaluate and write the report within SECONDS (with the epochs "
                        "reached); --resume continues the runs")
    p.add_argument("--jobs", type=int, default=1, metavar="N",
                   help="train N networks side by side in worker processes, each with the torch threads divided "
                        "by N (default 1; small networks gain more from this than from threads)")


def _mode(p: argparse.ArgumentParser) -> None:
    p.add_argument("--mode", choices=VARIANT_NAMES, default="constrained",
                   help="constrained (descent constraints + noise), constrained_nonoise (the constraints without "
                        "the noise), standard (loss on the last layer only) or noisy (standard trained with the "
                        "same noise)")


def _usage(parser: argparse.ArgumentParser) -> Callable:
    """A command that only prints ``parser``'s usage (a command group without a sub-command)."""
    def run(args):
        parser.print_usage(sys.stderr)
        print(f"{parser.prog}: error: choose a command (see --help)", file=sys.stderr)
        return 2
    return run


def _group(sub, name: str, text: str, metavar: str):
    """A command group ``name`` (its own sub-commands); without one it prints its usage."""
    p = sub.add_parser(name, help=text)
    p.set_defaults(run=_usage(p))
    return p.add_subparsers(dest="action", metavar=metavar)


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser of ``sdu-ext`` (imports no torch)."""
    parser = argparse.ArgumentParser(
        prog="sdu-ext", description="Robust stochastically-descending unrolled networks: train, evaluate and "
                                    "reproduce constrained LISTA (sparse coding) and GLOW-Prox (image "
                                    "inpainting).")
    parser.set_defaults(run=_usage(parser))
    sub = parser.add_subparsers(dest="command", metavar="{lista,inpaint,reproduce}")

    lista = _group(sub, "lista", "train or evaluate one LISTA network", "{train,eval,robustness}")
    p = lista.add_parser("train", help="train one LISTA network (resumable)")
    _mode(p)
    _run_options(p, "lista", "run directory: checkpoints and logs", True)
    p.set_defaults(run=_lista_train)
    p = lista.add_parser("eval", help="per-layer metrics of a checkpoint on the clean test set")
    _eval_options(p, "lista", "write JSON and plots to this directory")
    p.set_defaults(run=_lista_eval)
    p = lista.add_parser("robustness", help="perturbation sweep and OOD shift of a checkpoint")
    _eval_options(p, "lista", "write JSON and plots to this directory")
    p.set_defaults(run=_lista_robustness)

    inpaint = _group(sub, "inpaint", "train or evaluate one GLOW-Prox inpainting network", "{train,eval}")
    p = inpaint.add_parser("train", help="train one GLOW-Prox network (pretrains its Glow first; resumable)")
    _mode(p)
    p.add_argument("--glow", default=None, metavar="FILE",
                   help="reuse this pretrained Glow (a glow.pt of the same preset and seed) instead of pretraining")
    _run_options(p, "inpaint", "run directory: checkpoints, logs and the pretrained Glow (glow.pt)", True)
    p.set_defaults(run=_inpaint_train)
    p = inpaint.add_parser("eval", help="per-layer metrics and the perturbation sweep of a checkpoint")
    _eval_options(p, "inpaint", "write JSON, plots and an image grid to this directory")
    p.set_defaults(run=_inpaint_eval)

    reproduce = _group(sub, "reproduce", "train, evaluate and report the paper's comparison", "{lista,inpaint}")
    p = reproduce.add_parser("lista", help="constrained vs standard vs standard-with-noise LISTA")
    _run_options(p, "lista", "report directory (default: runs/lista_<preset>)", False)
    _time_budget(p)
    p.set_defaults(run=_lista_reproduce)
    p = reproduce.add_parser("inpaint", help="constrained vs standard vs standard-with-noise GLOW-Prox")
    _run_options(p, "inpaint", "report directory (default: runs/inpaint_<preset>)", False)
    _time_budget(p)
    p.set_defaults(run=_inpaint_reproduce)
    return parser


# ---------------------------------------------------------------- main

def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """``warnings.showwarning`` of the command: one line, without the source line."""
    print(f"sdu-ext: warning: {' '.join(str(message).split())}", file=sys.stderr if file is None else file)


def _interrupted(error: KeyboardInterrupt, argv: Sequence[str], args: argparse.Namespace) -> str:
    """The one line printed on Ctrl-C: where training stopped and the command that continues it."""
    where = ""
    if hasattr(error, "epoch"):
        where = f" at epoch {error.epoch} of {error.epochs}"
        if args.command == "reproduce":
            where += f" (the {error.variant} network)"
    if not hasattr(args, "resume"):
        return f"sdu-ext: interrupted{where}"
    again = [a for a in argv if a != "--overwrite"] + ([] if "--resume" in argv else ["--resume"])
    return f"sdu-ext: interrupted{where}; `{shlex.join(['sdu-ext', *again])}` continues"


def _set_threads(threads: Optional[int]) -> bool:
    """Set torch's CPU threads: ``threads`` (``--threads``), else the cores other processes leave
    idle (:func:`sdu_ext.train.threads.thread_choice`: a pool wider than the idle cores stalls at
    every barrier on a busy machine), and say which. True after a usage error (printed)."""
    if threads is not None and threads < 1:
        print(f"sdu-ext: error: --threads: expected an integer >= 1, got {threads}", file=sys.stderr)
        return True
    import torch

    if threads is None:
        from .train.threads import thread_choice

        threads, why = thread_choice()
        print(f"sdu-ext: using {threads} torch thread{'s' if threads != 1 else ''}: {why}; --threads N overrides",
              flush=True)
    torch.set_num_threads(threads)
    return False


def main(argv: Optional[List[str]] = None) -> int:
    """Run ``sdu-ext`` with ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning
        try:
            if hasattr(args, "threads") and _set_threads(args.threads):
                return 2
            return args.run(args)
        except KeyboardInterrupt as e:
            # drop the frames of the interrupted run first: their progress bars close (and clear
            # their lines) now, not after the message
            e.__traceback__ = e.__context__ = e.__cause__ = None
            print(_interrupted(e, argv, args), file=sys.stderr)
            return 130
        except Exception as e:
            from .experiments.common import CLIError
            from .train import NonFiniteError

            if isinstance(e, CLIError):
                print(f"sdu-ext: error: {e}", file=sys.stderr)
                return 2
            if isinstance(e, NonFiniteError):
                print(f"sdu-ext: training failed: {e}", file=sys.stderr)
                return 1
            raise
