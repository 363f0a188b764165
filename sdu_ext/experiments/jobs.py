"""Training runs of a reproduction in parallel worker processes (``--jobs N``).

A small network's training step is bound by per-operation overhead, not by its GEMMs, so a
second thread barely speeds one run up (quick LISTA preset: 1.1x at 2 threads, see
benchmarks/contention.py's README section), while two runs side by side, one thread each, take
the time of one. :func:`train_parallel` runs the jobs of a reproduction that way: each job is one
:func:`~sdu_ext.experiments.common.train_variant` call in a worker process (``spawn``: a fresh
interpreter, nothing forked from a parent with running thread pools) with ``threads`` torch
threads; the parent collects the best weights, the summary and the history of each, in the
order of the jobs. Every run is seeded on its own and uses the threads it would use alone, so
the results equal those of the same runs one after the other with that thread count.
"""
import concurrent.futures
import multiprocessing
import os
import signal
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

__all__ = ["Job", "train_parallel"]

# (variant, seed, run_dir, resume): one training run
Job = Tuple[str, int, str, bool]


def _worker_start(threads: int) -> None:
    torch.set_num_threads(threads)


def _run(train_variant: Callable, experiment, job: Job, device: str, share: Optional[float]):
    """One job in a worker: ``(state_dict of the best weights, summary, history)``; None after Ctrl-C
    (the parent reports it; the run's last checkpoint stays intact)."""
    variant, seed, run_dir, resume = job
    deadline = None if share is None else time.perf_counter() + share
    try:
        model, summary, history = train_variant(experiment, variant, run_dir, seed=seed, device=device,
                                                resume=resume, progress=False, deadline=deadline)
    except KeyboardInterrupt:
        return None
    return model.cpu().state_dict(), summary, history


def _interrupt_workers(pool) -> None:
    """SIGINT to the pool's running workers: their runs stop at their last checkpoint."""
    for process in list((getattr(pool, "_processes", None) or {}).values()):
        try:
            os.kill(process.pid, signal.SIGINT)
        except (OSError, AttributeError):
            pass


def train_parallel(train_variant: Callable, experiment, jobs: Sequence[Job], workers: int, threads: int, device: str,
                   share: Optional[float] = None, progress: bool = True,
                   done: Optional[Callable[[Job], None]] = None) -> List[Tuple[nn.Module, Dict[str, Any], List[dict]]]:
    """Train ``jobs`` with ``train_variant`` (:func:`sdu_ext.experiments.common.train_variant`, a
    module-level function: it is sent to the workers by name) in ``workers`` processes of
    ``threads`` torch threads each; returns, per job in order, ``(model with the best weights in
    eval mode, summary, history)`` as ``train_variant`` does. ``share``: the seconds each run may
    train (its deadline counts from its own start; None: no limit). ``done(job)`` runs in the
    parent after each job ends. An error of a job is raised here once the running jobs end;
    Ctrl-C cancels the jobs not started and raises KeyboardInterrupt once the running ones have
    stopped at their last checkpoint."""
    from tqdm.auto import tqdm

    results: List[Optional[tuple]] = [None] * len(jobs)
    context = multiprocessing.get_context("spawn")
    bar = tqdm(total=len(jobs), desc=f"train ({workers} jobs)", unit="run", disable=not progress)
    with concurrent.futures.ProcessPoolExecutor(max_workers=workers, mp_context=context,
                                                initializer=_worker_start, initargs=(threads,)) as pool:
        futures = {pool.submit(_run, train_variant, experiment, job, device, share): i for i, job in enumerate(jobs)}
        try:
            for future in concurrent.futures.as_completed(futures):
                i = futures[future]
                out = future.result()
                if out is None:
                    raise KeyboardInterrupt
                results[i] = out
                if done is not None:
                    done(jobs[i])
                bar.update(1)
                bar.set_postfix_str(f"{jobs[i][0]} seed {jobs[i][1]}")
        except BaseException as e:
            if isinstance(e, KeyboardInterrupt):  # also when only this process got the signal
                _interrupt_workers(pool)
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        finally:
            bar.close()
    trained = []
    for (variant, seed, _, _), (state, summary, history) in zip(jobs, results):
        model = experiment.build_model(seed)
        model.load_state_dict(state)
        trained.append((model.to(device).eval(), summary, history))
    return trained
