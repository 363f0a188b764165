"""What every experiment shares: the run options, the one :func:`train_variant`, the
learning-rate schedule and time budget of a run, checkpoint reading and the checks of a
run's output folder, device and epochs.

An experiment (:mod:`~sdu_ext.experiments.lista`, :mod:`~sdu_ext.experiments.inpaint`) fills
in an :class:`Experiment`: how to build its model, its training noise and its constraints,
and what its training summary adds. :func:`train_variant` then trains any of the variants
of :data:`sdu_ext.presets.VARIANTS` the same way for both, and :func:`train_variants` every
variant of a preset for each of its seeds.

A preset's learning-rate schedule is the trainer's own (``TrainConfig.lr_schedule``: it is
saved in every checkpoint, so ``--resume`` continues it exactly). A time budget
(:class:`Budget`) ends a run through the ``fit`` callback.
"""
import abc
import dataclasses
import os
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from ..presets import VARIANTS
from ..train import PrimalDualTrainer, load_checkpoint
from ..train.config import COMPILE_MODES
from ..train.optim import build_optimizer
from .report import copy_logs, start_report

REPORT_FILES = ("config.json", "metrics.json", "report.md", "checkpoints")  # what a previous reproduction left

__all__ = ["CLIError", "Interrupted", "RunOptions", "Experiment", "Budget", "train_variant",
           "train_variants", "run_name", "seeds_of", "check_options", "check_out", "check_resume", "check_seed",
           "check_time_budget", "start_reproduction", "check_data_cache",
           "check_device", "apply_epochs", "read_checkpoint", "load_weights"]


class CLIError(Exception):
    """A usage error reported as ``sdu-ext: error: <message>`` with exit status 2."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during training: ``epoch`` (1-based, the epoch in progress) of ``epochs``, in the
    training run of ``variant``."""

    def __init__(self, epoch: int, epochs: int, variant: str):
        super().__init__(f"interrupted at epoch {epoch} of {epochs} ({variant})")
        self.epoch, self.epochs, self.variant = epoch, epochs, variant


@dataclasses.dataclass
class RunOptions:
    """The options of one command that are not part of a preset (the CLI fills them).

    out: the run or report folder. seed: seeds the initial weights, the training and every
    evaluation draw (the data set is fixed by the preset). device: a torch device name.
    progress: progress bars. data_cache: the data set cache folder (None: ``$SDU_EXT_CACHE``
    or ``~/.cache/sdu_ext``). resume: continue the runs in ``out``. overwrite: replace a
    previous run in ``out``. epochs: override the preset's number of epochs. threads: the
    torch CPU threads (only stated in a report's command line; the CLI sets them).
    time_budget: seconds the whole command may take (None: no limit); training stops
    cleanly in time to evaluate and report with the epochs reached (``resume`` continues).
    jobs: training runs side by side in worker processes (``reproduce`` only; each gets the
    torch threads divided by ``jobs``, at least 1; results as with those threads one by one).
    compile: ``TrainConfig.compile`` of every training run (None: the preset's, eager).
    """

    out: Optional[str] = None
    seed: int = 0
    device: str = "cpu"
    progress: bool = True
    data_cache: Optional[str] = None
    resume: bool = False
    overwrite: bool = False
    epochs: Optional[int] = None
    threads: Optional[int] = None
    time_budget: Optional[float] = None
    jobs: int = 1
    compile: Optional[str] = None


class Experiment(abc.ABC):
    """The parts of one experiment that :func:`train_variant` needs, for one ``preset``.

    ``format``: the checkpoint metadata format of the experiment; ``resume_sections``: the
    preset sections a resumed run must share with the checkpoint it continues.
    """

    format: str = ""
    resume_sections: Tuple[str, ...] = ("data", "model", "method")

    def __init__(self, preset):
        self.preset = preset

    @abc.abstractmethod
    def build_model(self, seed: int) -> nn.Module:
        """The untrained network; its random draws are seeded by ``seed``."""

    @abc.abstractmethod
    def build_noise(self, model: nn.Module, seed: int, device: str = "cpu") -> Callable:
        """The training noise hook of ``model`` (its generator seeded by ``seed``, on ``device``,
        the training device: a CPU generator would draw every step's noise on the host)."""

    @abc.abstractmethod
    def constraints(self, model: nn.Module):
        """The :class:`~sdu_ext.train.DescentConstraints` (one or a list) of ``model``."""

    @abc.abstractmethod
    def splits(self) -> Tuple[Any, Any]:
        """``(train, val)`` in the form :class:`~sdu_ext.train.PrimalDualTrainer` takes."""

    def trainer_options(self, model: nn.Module, config) -> Dict[str, Any]:
        """Extra keyword arguments of the trainer (``loss``, ...)."""
        return {}

    def optimizer_factory(self, model: nn.Module, config) -> Callable:
        """``factory(params) -> torch.optim.Optimizer`` of the weights (default: ``config.optimizer``
        at ``config.lr``, as the trainer builds it: fused Adam/AdamW where supported)."""
        return lambda params: build_optimizer(config.optimizer, params, config.lr, config.optimizer_kwargs)

    def metadata(self, variant: str) -> Dict[str, Any]:
        """What a checkpoint records about its run (read back by the ``eval`` commands)."""
        return {"format": self.format, "preset": self.preset.to_dict(), "variant": variant,
                "sizes": self.preset.sizes()}

    def summary(self, model: nn.Module, trainer: PrimalDualTrainer, history: List[dict], mode: str
                ) -> Dict[str, Any]:
        """The experiment's own entries of a training summary (multipliers, step sizes, ...)."""
        return {}


def _differences(old: Any, new: Any, where: str = "") -> List[str]:
    """``"section.field: old -> new"`` for every leaf where the nested dicts ``old`` and ``new`` differ."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for k in list(new) + [k for k in old if k not in new]:
            out += _differences(old.get(k), new.get(k), f"{where}.{k}" if where else str(k))
        return out
    return [] if old == new else [f"{where}: {old!r} -> {new!r}"]


def check_resume(run_dir: str, preset, variant: str, sections: Sequence[str]) -> None:
    """CLIError naming what differs when ``run_dir/last.pt`` exists but cannot be continued as
    ``variant`` of ``preset`` (unreadable, another network, other ``sections`` of the preset).
    Cheap next to preparing data: the commands call it before they do any work."""
    last = os.path.join(run_dir, "last.pt")
    if not os.path.isfile(last):
        return
    afresh = f"pass --overwrite instead of --resume to start {run_dir!r} afresh"
    try:
        meta = load_checkpoint(last).get("metadata") or {}
    except ValueError as e:  # unreadable, truncated or foreign
        raise CLIError(f"resume: {e}; {afresh}") from e
    old_variant = meta.get("variant", variant)
    if old_variant != variant:
        raise CLIError(f"resume: {last!r} holds the {old_variant!r} network, not {variant!r}; {afresh}")
    old, new = meta.get("preset", {}), preset.to_dict()
    diff = [d for k in sections for d in _differences(old.get(k), new[k], k)]
    if diff:
        raise CLIError(f"resume: {last!r} was trained with other settings than preset {preset.name!r} "
                       f"({'; '.join(diff)}); {afresh}")


def _epoch_in_progress(last: str, epochs: int) -> int:
    """The 1-based epoch a run was in when it stopped: one after the last checkpoint's."""
    try:
        done = int(load_checkpoint(last)["epoch"]) if os.path.isfile(last) else 0
    except Exception:  # noqa: BLE001 - only used for a message
        done = 0
    return max(1, min(done + 1, epochs))


class Budget:
    """The time budget of a command: ``seconds`` from now for ``runs`` training runs and the
    evaluation after them, which keeps ``reserve`` of the budget (None: no limit).
    :meth:`deadline` is the time (``time.perf_counter``) by which the next run must stop:
    an equal share of what is left for training."""

    def __init__(self, seconds: Optional[float], runs: int, reserve: float = 0.15):
        check_time_budget(seconds)
        self.seconds, self.runs_left = seconds, runs
        self.end = None if seconds is None else time.perf_counter() + seconds * (1 - reserve)

    def share(self, workers: int) -> Optional[float]:
        """The seconds each of the remaining runs may train when ``workers`` run side by side
        (None: no limit): what is left for training, in waves of ``workers`` runs."""
        if self.end is None:
            return None
        waves = -(-max(self.runs_left, 1) // max(workers, 1))
        return max(self.end - time.perf_counter(), 0.0) / waves

    def deadline(self) -> Optional[float]:
        """The stop time of the next run (and one run fewer is left after it)."""
        if self.end is None:
            return None
        share = max(self.end - time.perf_counter(), 0.0) / max(self.runs_left, 1)
        self.runs_left -= 1
        return time.perf_counter() + share


def train_variant(experiment: Experiment, variant: str, run_dir: str, *, seed: int = 0, device: str = "cpu",
                  resume: bool = False, progress: bool = True, deadline: Optional[float] = None
                  ) -> Tuple[nn.Module, Dict[str, Any], List[dict]]:
    """Train one network of the comparison into ``run_dir`` (checkpoints and logs).

    ``variant``: a key of :data:`sdu_ext.presets.VARIANTS`. Every variant starts from the
    weights ``experiment.build_model(seed)`` and sees the same batches. The preset's
    learning-rate schedule (``train.lr_schedule``) may end a converged run;
    ``deadline`` (a ``time.perf_counter`` time, None: none) ends the run after the epoch
    that would otherwise run past it. Returns ``(model, summary, history)`` with the best
    weights loaded, in eval mode; ``summary`` holds the epochs, the best epoch, the best
    validation loss, why training ended (``stop``: "epochs", "patience", "converged" or
    "time budget"), the final learning rate, the wall-clock seconds of this call and the
    experiment's own entries (:meth:`Experiment.summary`). ``resume`` continues
    ``run_dir/last.pt`` when it exists; a checkpoint of another variant or configuration
    raises CLIError naming what differs. Ctrl-C raises :class:`Interrupted` (the last
    checkpoint stays intact).
    """
    if variant not in VARIANTS:
        raise ValueError(f"variant: expected one of {', '.join(map(repr, VARIANTS))}, got {variant!r}")
    mode, noisy = VARIANTS[variant]
    last = os.path.join(run_dir, "last.pt")
    if resume:
        check_resume(run_dir, experiment.preset, variant, experiment.resume_sections)
    torch.manual_seed(seed)
    model = experiment.build_model(seed)
    noise = experiment.build_noise(model, seed, device) if noisy else None
    cfg = dataclasses.replace(experiment.preset.train, mode=mode, seed=seed, device=device, checkpoint_dir=run_dir,
                              log_dir=run_dir, progress=progress, tensorboard=False)
    budget_stop = []

    def callback(tr, row):
        if deadline is not None and row["epoch"] < cfg.epochs \
                and time.perf_counter() + float(row.get("time_s") or 0.0) > deadline:
            budget_stop.append(row["epoch"])
            return True
        return False

    train, val = experiment.splits()
    trainer = PrimalDualTrainer(model, train, val, cfg, experiment.constraints(model), noise=noise,
                                metadata=experiment.metadata(variant),
                                optimizer=experiment.optimizer_factory(model, cfg),
                                **experiment.trainer_options(model, cfg))
    t0 = time.perf_counter()
    try:
        history = trainer.fit(resume=resume, callback=callback)
    except KeyboardInterrupt:
        raise Interrupted(_epoch_in_progress(last, cfg.epochs), cfg.epochs, variant) from None
    except ValueError as e:
        if str(e).startswith("resume:"):
            raise CLIError(f"{e}; pass --overwrite instead of --resume to start {run_dir!r} afresh") from e
        raise
    why = "time budget" if budget_stop else {"plateau": "converged", "patience": "patience"}.get(
        trainer.stop_reason, "epochs")
    summary = {"epochs": len(history), "max_epochs": experiment.preset.train.epochs, "stop": why,
               "best_epoch": trainer.best_epoch, "best_val_loss": trainer.best_loss,
               "final_lr": float(trainer.optimizer.param_groups[0]["lr"]) if trainer.optimizer is not None else None,
               "seconds": time.perf_counter() - t0,
               "train_seconds_logged": float(sum(r.get("time_s", 0.0) for r in history))}
    summary.update(experiment.summary(model, trainer, history, mode))
    model.eval()
    return model, summary, history


def run_name(variant: str, seed: int) -> str:
    """The folder of one training run of a reproduction, under ``checkpoints/`` and ``runs/``."""
    return os.path.join(variant, f"seed{seed}")


def seeds_of(preset, options: RunOptions) -> List[int]:
    """The seeds of a reproduction: ``options.seed`` and the ``preset.seeds - 1`` after it."""
    return [options.seed + i for i in range(getattr(preset, "seeds", 1))]


def train_variants(experiment: Experiment, out: str, options: RunOptions, device: str, timing: Dict[str, Any],
                   budget: Optional[Budget] = None
                   ) -> Tuple[Dict[str, List[Tuple[nn.Module, Dict[str, Any]]]], Dict[str, List[List[dict]]], bool]:
    """Every variant of the preset for each of its seeds (:func:`seeds_of`), trained by
    :func:`train_variant` into ``out/checkpoints/<variant>/seed<s>`` with its logs copied to
    ``out/runs/<variant>/seed<s>``; the seconds of each variant (its runs, summed) go into
    ``timing``; ``budget`` gives each run its deadline. With ``options.jobs`` > 1 the runs go
    to that many worker processes (:mod:`.jobs`) of ``threads // jobs`` torch threads each.
    Returns ``(trained, histories, resumed)``: variant -> [(model, summary) per seed],
    variant -> [history per seed], and whether some run continued a checkpoint."""
    variants = experiment.preset.variants
    parallel = options.jobs > 1
    # one by one: the networks without constraints first (they converge in fewer epochs, and
    # under a time budget what they leave of their share goes to the constrained ones); side by
    # side: the constrained ones first (they take longest). The results do not depend on the
    # order: every run is seeded on its own.
    order = sorted(variants, key=lambda v: (VARIANTS[v][0] == "constrained") != parallel)
    jobs = [(v, seed, os.path.join(out, "checkpoints", run_name(v, seed)), options.resume)
            for v in order for seed in seeds_of(experiment.preset, options)]
    resumed = options.resume and any(os.path.isfile(os.path.join(job[2], "last.pt")) for job in jobs)

    def logs(job):
        copy_logs(job[2], os.path.join(out, "runs", run_name(job[0], job[1])))

    if parallel:
        from .jobs import train_parallel

        workers = min(options.jobs, len(jobs))
        runs = train_parallel(train_variant, experiment, jobs, workers, max(1, torch.get_num_threads() // workers),
                              device, share=None if budget is None else budget.share(workers),
                              progress=options.progress, done=logs)
        seconds = [summary["seconds"] for _, summary, _ in runs]  # the workers' own clocks
    else:
        runs, seconds = [], []
        for job in jobs:
            t0 = time.perf_counter()
            runs.append(train_variant(experiment, job[0], job[2], seed=job[1], device=device, resume=job[3],
                                      progress=options.progress,
                                      deadline=None if budget is None else budget.deadline()))
            logs(job)
            seconds.append(time.perf_counter() - t0)
    trained, histories = {v: [] for v in variants}, {v: [] for v in variants}
    for (variant, seed, _, _), (model, summary, history), t in zip(jobs, runs, seconds):
        trained[variant].append((model, dict(summary, seed=seed)))
        histories[variant].append(history)
        timing[f"train_{variant}_seconds"] = timing.get(f"train_{variant}_seconds", 0.0) + t
    return trained, histories, resumed


# ---------------------------------------------------------------- options

SEED_LIMIT = 2 ** 32  # seeds are < 2**32: every derived seed (seed * 1000003 + i, ...) then fits a torch seed


def check_options(preset, options: RunOptions, markers: Optional[Sequence[str]] = None
                  ) -> Tuple[Any, str, Optional[str], Optional[str]]:
    """Every check of a command's options that reads no data, before it does any work (so a
    bad option leaves nothing behind): ``(preset with options.epochs applied, device,
    data_cache, out)``. ``out`` is checked by :func:`check_out` with ``markers`` (None: the
    command takes no run folder, ``out`` is returned as given); it is not made here. ``preset``
    None (a command that reads it from a checkpoint) is returned as None."""
    if options.compile is not None and options.compile not in COMPILE_MODES:
        raise CLIError(f"--compile: expected one of {', '.join(m for m in COMPILE_MODES if m)}, "
                       f"got {options.compile!r}")
    if preset is not None:
        preset = apply_epochs(preset, options.epochs)
        if options.compile is not None:
            preset.train = dataclasses.replace(preset.train, compile=options.compile)
    device = check_device(options.device)
    check_seed(options.seed)
    check_time_budget(options.time_budget)
    if isinstance(options.jobs, bool) or not isinstance(options.jobs, int) or options.jobs < 1:
        raise CLIError(f"--jobs: expected an integer >= 1, got {options.jobs!r}")
    cache = check_data_cache(options.data_cache)
    out = options.out
    if markers is not None:
        out = check_out(out, resume=options.resume, overwrite=options.overwrite, markers=markers)
    return preset, device, cache, out


def start_reproduction(kind: str, preset, options: RunOptions, resume_sections: Sequence[str] = ()
                       ) -> Tuple[Any, str, Optional[str], str]:
    """``(preset, device, data_cache, out)`` of ``sdu-ext reproduce <kind>``: the preset with
    ``options.epochs`` applied, the checked device and data cache folder, and the report folder
    (``options.out``, default ``runs/<kind>_<preset>``), made with its ``.gitignore`` and
    ``config.json`` after every option (:func:`check_options`) and, with ``options.resume``,
    every run's ``last.pt`` (:func:`check_resume` against ``resume_sections``) is checked."""
    options = dataclasses.replace(options, out=options.out or os.path.join("runs", f"{kind}_{preset.name}"))
    preset, device, cache, out = check_options(preset, options, REPORT_FILES)
    if options.resume:
        for variant in preset.variants:
            for seed in seeds_of(preset, options):
                check_resume(os.path.join(out, "checkpoints", run_name(variant, seed)), preset, variant,
                             resume_sections)
    start_report(preset, out)
    return preset, device, cache, out


def check_out(out: Optional[str], *, resume: bool, overwrite: bool, markers: Sequence[str]) -> str:
    """The output folder ``out`` of a run, checked but not made (the first file written into it
    makes it, so a command that fails before leaves no folder). CLIError when it is empty or a
    file, or when it holds a previous run (any of ``markers``) and neither ``resume`` nor
    ``overwrite`` says what to do with it."""
    if not out:
        raise CLIError(f"--out: expected a folder path, got {out!r}")
    if os.path.exists(out) and not os.path.isdir(out):
        raise CLIError(f"--out: expected a folder, got the file {out!r}")
    found = [m for m in markers if os.path.exists(os.path.join(out, m))]
    if found and not (resume or overwrite):
        raise CLIError(f"--out: {out!r} holds a previous run ({', '.join(found)}); pass --resume to continue it "
                       "or --overwrite to replace it")
    return out


def check_seed(seed: int) -> int:
    """``seed`` unless it is not an integer in [0, 2**32) (CLIError naming --seed): the seeds
    derived from it (``seed * 1000003 + i``, ``seed + 10000``, ...) must fit a torch seed."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < SEED_LIMIT:
        raise CLIError(f"--seed: expected an integer in [0, 2**32), got {seed!r}")
    return seed


def check_time_budget(seconds: Optional[float]) -> Optional[float]:
    """``seconds`` unless it is neither None nor a number > 0 (CLIError naming --time-budget)."""
    if seconds is not None and not (isinstance(seconds, (int, float)) and not isinstance(seconds, bool)
                                    and seconds > 0):
        raise CLIError(f"--time-budget: expected a number of seconds > 0, got {seconds!r}")
    return seconds


def check_data_cache(path: Optional[str]) -> Optional[str]:
    """``path`` unless it is empty or a file (CLIError); None keeps the default cache."""
    if path is not None and (not path or (os.path.exists(path) and not os.path.isdir(path))):
        raise CLIError(f"--data-cache: expected a folder path, got {'the file ' if path else ''}{path!r}")
    return path


def check_device(name: str) -> str:
    """The torch device ``name`` as a string; CLIError when it is not a device or not visible."""
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise CLIError(f"--device: expected a torch device such as 'cpu' or 'cuda', got {name!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise CLIError(f"--device: {name!r} requested but no CUDA device is visible")
    return str(dev)


def apply_epochs(preset, epochs: Optional[int]):
    """``preset`` with ``train.epochs`` replaced by ``epochs`` (None keeps it; CLIError when negative)."""
    if epochs is not None:
        if epochs < 0:
            raise CLIError(f"--epochs: expected an integer >= 0, got {epochs}")
        preset.train = dataclasses.replace(preset.train, epochs=epochs)
    return preset


# ---------------------------------------------------------------- checkpoints

def read_checkpoint(path: str, kind: str) -> Tuple[str, Dict[str, Any]]:
    """``(file, state)`` of the checkpoint ``path`` (a file, or a run directory holding
    ``best.pt`` or ``last.pt``) written by ``sdu-ext <kind> train``; CLIError otherwise."""
    hint = f"(train one with `sdu-ext {kind} train --out DIR`)"
    if os.path.isdir(path):
        found = [os.path.join(path, n) for n in ("best.pt", "last.pt") if os.path.isfile(os.path.join(path, n))]
        if not found:
            raise CLIError(f"checkpoint: no best.pt or last.pt in the directory {path!r} {hint}")
        path = found[0]
    elif not os.path.isfile(path):
        raise CLIError(f"checkpoint: no file at {path!r} {hint}")
    try:
        return path, load_checkpoint(path)
    except (FileNotFoundError, ValueError) as e:
        raise CLIError(str(e)) from e


def load_weights(model: nn.Module, weights: Dict[str, torch.Tensor], path: str, preset, device: str) -> nn.Module:
    """``model`` with the state dict ``weights`` of the checkpoint ``path``, on ``device`` in
    eval mode; CLIError when they do not fit (another size than ``preset``'s)."""
    try:
        model.load_state_dict(weights)
    except RuntimeError as e:
        raise CLIError(f"checkpoint: the weights in {path!r} do not fit preset {preset.name!r}: {e}") from e
    return model.to(device).eval()
