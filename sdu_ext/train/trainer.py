"""Primal-dual training of unrolled networks with per-layer descent constraints (SPEC section 4).

The trainer is generic over models: anything whose forward returns the stacked
iterates (L+1, B, ...) trains, with a per-sample task loss on the output and
residuals given by :class:`~sdu_ext.train.DescentConstraints` groups.
"""
import os
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

import torch
from torch import nn

from ..checks import check_callable, check_directory, check_eps, check_instance
from .checkpoint import (FORMAT, check_resumable, clone_state, load_checkpoint, plain_state, rng_state,
                         save_checkpoint, set_rng_state)
from .config import TrainConfig
from .constraints import DescentConstraints, Stats
from .data import TrainingData, eval_batches, seed_for, to_device, train_batches, world_and_rank
from .dual import Multiplier, group_multipliers
from .finite import FiniteChecks, NonFiniteError, check_loss, check_multipliers, check_state, check_values
from .layerwise import check_plan, layer_parameter_sets, stage_of
from .logs import HistoryLog, epoch_row
from .objective import Objective, matmul_precision, squared_error
from .optim import build_optimizer
from .schedule import make_schedule

try:
    from tqdm.auto import tqdm
except ImportError:  # pragma: no cover - tqdm is a dependency
    tqdm = None

__all__ = ["PrimalDualTrainer", "NonFiniteError", "squared_error"]

LAST = "last.pt"
BEST = "best.pt"


# ------------------------------------------------------------------ trainer

class PrimalDualTrainer:
    """Primal-dual trainer (SPEC section 4), in cooper's vocabulary: the problem states a
    task loss and constraint values c_l (one per constrained layer and group), each with a
    non-negative multiplier nu_l updated by projected dual ascent.

    Lagrangian = mean_b loss(y_L, batch) + sum_l nu_l c_l (constrained mode; the
    other modes drop the constraint term, see :class:`TrainConfig`).

    Args:
        model: ``nn.Module``; ``model(batch[0], return_all=True[, noise=noise])`` returns
            the iterates (L+1, B, ...) (index 0 = initial point), unless ``forward`` is given.
        train_data, val_data: tuples of tensors with a common first dimension (for LISTA
            ``(x (N, n), y_star (N, m))``), a TensorDataset, or any map-style Dataset whose
            items collate into such tuples. ``val_data`` (optional) drives model selection
            and early stopping with the noise-free loss of the last layer.
        config: :class:`TrainConfig`.
        constraints: a :class:`DescentConstraints` or a list of them (distinct ``name``);
            required in constrained mode, optional (logged only) otherwise.
        loss: ``loss(output (B, ...), batch) -> (B,)`` per-sample task loss
            (default :func:`squared_error`, the LISTA loss). Per-sample values let the
            trainer average exactly over a global batch split across ranks.
        forward: ``forward(model, batch, noise) -> iterates``; ``model`` may be the DDP
            wrapper, so call it rather than its methods.
        noise: noise hook ``noise(layer, y, xs) -> y`` passed to the model in training
            (modes ``constrained`` and ``layerwise`` when given; required for ``noisy``;
            rejected for ``standard``). Validation is always noise-free.
        problem: problem for the gradient residuals (default: ``model.problem`` if any).
        optimizer: factory ``optimizer(params) -> torch.optim.Optimizer`` (default: the
            ``config.optimizer`` class with ``lr=config.lr``).
        layer_parameters: ``layer_parameters(model, k) -> params`` of 1-based layer k, for
            layer-wise training with frozen layers (default: element k-1 of every
            ModuleList/ParameterList of length L, plus the parameters outside them).
        metadata: a dict of plain values stored in every checkpoint (e.g. how to rebuild
            the model).
        multipliers: initial multipliers, a dict group name -> (K,) values >= 0 or a
            :class:`~sdu_ext.train.Multiplier` of size K (K = the group's constrained layers;
            a Multiplier brings its own dual optimizer and is moved to the trainer's device);
            default: zeros stepped by ``nu <- max(0, nu + lr_dual * c)``.
    One step: :meth:`step` (a primal step on one batch, plus the dual step when due).
    After :meth:`fit`: ``history`` (list of per-epoch rows), ``multipliers`` and
    ``slacks`` (dict group name -> (K,) float64, one entry per constrained layer),
    ``best_epoch``, ``best_loss``.

    Distributed: when ``torch.distributed`` is initialised (e.g. under ``torchrun``;
    with NCCL, call ``torch.cuda.set_device`` first), every rank builds the trainer on
    the same data and config. Each global batch (the same shuffle on every rank) is
    split into contiguous shards; gradients are averaged by DDP
    (``find_unused_parameters=False``: every parameter must take part in the forward;
    stacked iterates give later layers zero gradients in layer-wise stages); the
    per-sample loss and constraint sums are all-reduced before the backward, so the
    gradient and every dual step use the global batch's values (the ``ratio_of_means``
    form through its all-reduced numerator and denominator) and all ranks hold identical
    multipliers. Validation and the per-epoch estimates are sharded the same way. Rank 0
    writes the checkpoints (with every rank's RNG state) and logs; a resume reads
    ``last.pt`` on every rank, so ``checkpoint_dir`` must be on a shared file system.
    """

    def __init__(self, model: nn.Module, train_data, val_data=None, config: Optional[TrainConfig] = None,
                 constraints: Union[DescentConstraints, Sequence[DescentConstraints], None] = None, *,
                 loss: Optional[Callable] = None, forward: Optional[Callable] = None,
                 noise: Optional[Callable] = None, problem=None, optimizer: Optional[Callable] = None,
                 layer_parameters: Optional[Callable] = None, metadata: Optional[Dict[str, Any]] = None,
                 multipliers: Optional[Dict[str, Union[Multiplier, torch.Tensor, Sequence[float]]]] = None):
        check_instance(model, "model", nn.Module, "a torch.nn.Module")
        self.config = cfg = check_instance(TrainConfig() if config is None else config, "config", TrainConfig,
                                           "a TrainConfig")
        if isinstance(constraints, DescentConstraints):
            constraints = [constraints]
        self.groups = list(constraints) if constraints is not None else []
        for g in self.groups:
            check_instance(g, "constraints", DescentConstraints, "DescentConstraints")
        self._names = names = [g.name for g in self.groups]
        if len(set(names)) != len(names):
            raise ValueError(f"constraints: expected distinct group names, got {names}")
        if cfg.mode == "constrained" and not self.groups:
            raise ValueError("constraints: mode='constrained' needs at least one DescentConstraints, got None")
        if cfg.mode == "noisy" and noise is None:
            raise ValueError("noise: mode='noisy' trains with a noise hook, got None")
        if cfg.mode == "standard" and noise is not None:
            raise ValueError("noise: mode='standard' trains without noise (use mode='noisy'), got a hook")
        for name, fn in (("loss", loss), ("forward", forward), ("noise", noise), ("optimizer", optimizer),
                         ("layer_parameters", layer_parameters)):
            check_callable(fn, name)
        check_instance({} if metadata is None else metadata, "metadata", dict, "a dict")

        for name in ("checkpoint_dir", "log_dir"):
            check_directory(getattr(cfg, name), name)
        self.world, self.rank = world_and_rank()
        device = torch.device(cfg.device)
        if device.type == "cuda" and device.index is None and self.world > 1:
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        self.device = device
        self.model = model.to(device)
        self.noise = noise.to(device) if isinstance(noise, nn.Module) else noise
        self.problem = problem if problem is not None else getattr(self.model, "problem", None)
        self.objective = Objective(loss, forward, self.groups, self.problem, cfg.autocast, cfg.compile)
        if self.world > 1 and self.objective.cudagraphs:
            raise ValueError(f"compile: {cfg.compile!r} replays CUDA graphs, not supported under DDP (its "
                             "all-reduces would be captured untested); use 'default' or 'max-autotune-no-cudagraphs'")
        self._optimizer_factory = optimizer
        self._layer_parameters = layer_parameters
        self.metadata = dict(metadata or {})
        self.train_data = TrainingData(train_data, "train_data")
        self.val_data = TrainingData(val_data, "val_data") if val_data is not None else None
        if cfg.resident_data:
            for data in (self.train_data, self.val_data):
                if data is not None:
                    data.keep_on(device)

        self.num_layers = self._probe_layers()
        L = self.num_layers
        self._active = [g.active(L) for g in self.groups]
        if cfg.mode == "layerwise":
            check_plan(self.model, L, cfg.epochs, cfg.layerwise_finetune or layer_parameters is not None)

        self.duals = [d.to(device) for d in group_multipliers(
            [g.name for g in self.groups], [[i + 1 for i in a] for a in self._active], multipliers, cfg.lr_dual,
            cfg.resilient, cfg.resilient_cost)]
        self._index = [torch.tensor(a, dtype=torch.long, device=device) for a in self._active]
        self._finite = FiniteChecks(cfg.check_every, self.groups, self.duals, self._active, self._index)
        self.epoch = 0          # completed epochs
        self.stage = None
        self.optimizer = None
        self.history = []
        self.best_loss = None
        self.best_epoch = None
        self._best_state = None
        self._stale = 0
        self._schedule = make_schedule(cfg)
        self.stop_reason: Optional[str] = None  # "plateau" (lr schedule) or "patience" once stopped early
        self.finished = False
        self._shuffle_seed = cfg.seed
        self._wrapped = self.model
        self._log = None

    # -------------------------------------------------------------- public state

    @property
    def multipliers(self) -> Dict[str, torch.Tensor]:
        """Dict group name -> (K,) float64 multipliers of the constrained layers (on the CPU)."""
        return {g.name: d.value.to("cpu", copy=True) for g, d in zip(self.groups, self.duals)}

    @property
    def slacks(self) -> Dict[str, torch.Tensor]:
        """Dict group name -> (K,) float64 resilient relaxations (zeros unless resilient)."""
        return {g.name: d.slack.to("cpu", copy=True) for g, d in zip(self.groups, self.duals)}

    def constrained_layers(self) -> Dict[str, List[int]]:
        """Dict group name -> 1-based indices of the layers with a multiplier."""
        return {g.name: [i + 1 for i in a] for g, a in zip(self.groups, self._active)}

    # -------------------------------------------------------------- setup

    def _module(self):
        """The model without a ``torch.compile`` wrapper: its state_dict has the plain keys."""
        return getattr(self.model, "_orig_mod", self.model)

    def _probe_layers(self):
        L = getattr(self.model, "num_layers", None)
        if isinstance(L, int) and L >= 1:
            return L
        idx = torch.arange(1)
        with torch.no_grad(), torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            it = self.objective.iterates(self.model, self.train_data.get(idx, self.device), None)
        return it.shape[0] - 1

    def _stage_of(self, epoch):
        if self.config.mode != "layerwise":
            return None
        return stage_of(epoch, self.config.epochs, self.num_layers)

    def _params_for(self, stage):
        if stage is None or self.config.layerwise_finetune:
            return [p for p in self.model.parameters() if p.requires_grad]
        if self._layer_parameters is not None:
            params = list(self._layer_parameters(self.model, stage))
        else:
            per_layer, shared = layer_parameter_sets(self.model, self.num_layers)
            params = per_layer[stage - 1] + shared
        return [p for p in params if p.requires_grad]

    def _make_optimizer(self, stage):
        params = self._params_for(stage)
        if not params:
            raise ValueError(f"model: no trainable parameters{'' if stage is None else f' for layer {stage}'}")
        if self._optimizer_factory is not None:
            return self._optimizer_factory(params)
        return build_optimizer(self.config.optimizer, params, self.config.lr, self.config.optimizer_kwargs)

    def _eps(self, epoch):
        override = self.config.eps_at(epoch)
        return [g.eps if override is None else override for g in self.groups]

    def _wrap(self):
        self._wrapped = self.model
        if self.world > 1 and any(p.requires_grad for p in self.model.parameters()):
            from torch.nn.parallel import DistributedDataParallel
            ids = [self.device.index] if self.device.type == "cuda" else None
            self._wrapped = DistributedDataParallel(
                self.model, device_ids=ids)

    # -------------------------------------------------------------- one step

    def _step(self, batch, epoch, batch_index, eps):
        with matmul_precision(self.config.matmul_precision):
            return self._primal_dual_step(batch, epoch, batch_index, eps)

    def _primal_dual_step(self, batch, epoch, batch_index, eps):
        cfg = self.config
        constrained = cfg.mode == "constrained"
        train_noise = None if cfg.mode == "standard" else self.noise
        v = self.objective.step_values(self._wrapped, batch, train_noise, eps, self.duals, self._index, self.stage,
                                       constrained, self.num_layers)
        # No host read here: the checks are read every check_every steps (at once when 1).
        self._finite.values(epoch, batch_index, v.stats.mean_loss(), v.iterates, v.values if constrained else None)
        self.model.zero_grad(set_to_none=True)
        v.lagrangian.backward()
        self.optimizer.step()
        if constrained and cfg.dual_every == "batch":
            self._dual_step(v.values)
            self._finite.multipliers(epoch, batch_index)
        return v.stats, v.values, v.value

    def _dual_step(self, c_all):
        for c, idx, dual in zip(c_all, self._index, self.duals):
            dual.step(c[idx])

    def step(self, batch, read: bool = True) -> Dict[str, Any]:
        """One training step on ``batch`` (this rank's part of a global batch, as the items of
        ``train_data`` collate; moved to the trainer's device): the primal step on the
        Lagrangian of the current epoch's mode, eps and layer-wise stage, then the dual step
        when ``dual_every="batch"`` in constrained mode. Outside :meth:`fit` the first call
        builds the optimizer (nothing is seeded). Returns ``{"loss": global mean task loss,
        "lagrangian": its value, "constraints": {group: (L,) float64 values on the CPU}}``; raises
        :class:`NonFiniteError` like :meth:`fit`, at the end of the call. With ``read=False``
        nothing is read on the host: the loss and Lagrangian come back as 0-d float64 tensors
        and the values stay on the device; the checks are read every ``check_every`` calls (and
        by the next call with ``read=True``)."""
        epoch = self.epoch
        if self.optimizer is None:
            self.stage = self._stage_of(epoch)
            self.optimizer = self._make_optimizer(self.stage)
        if self.world > 1 and self._wrapped is self.model:
            self._wrap()
        self.model.train()
        stats, c_all, lag = self._step(to_device(batch, self.device), epoch, None, self._eps(epoch))
        if not read:
            self._finite.end_step()
            return {"loss": stats.mean_loss(), "lagrangian": lag, "constraints": dict(zip(self._names, c_all))}
        self._finite.read()
        return {"loss": stats.loss(), "lagrangian": float(lag),
                "constraints": {name: c.cpu() for name, c in zip(self._names, c_all)}}

    # -------------------------------------------------------------- estimates

    @torch.no_grad()
    def _estimate(self, data, noise, eps, train_mode):
        with matmul_precision(self.config.matmul_precision):
            return self._sum_batches(data, noise, eps, train_mode)

    def _sum_batches(self, data, noise, eps, train_mode):
        self.model.train(train_mode)
        stats = Stats(self.num_layers, self.groups, self.device)
        for idx in data.place(eval_batches(len(data), self.config.batch_size, self.world, self.rank)):
            batch = data.get(idx, self.device)
            it = self.objective.iterates(self.model, batch, noise)
            stats.add(self.objective.per_sample_loss(it[-1], batch),
                      self.objective.evaluate_groups(it, batch, eps, grad=False))
        return stats.all_reduce()

    def evaluate(self, data, noise: Optional[Callable] = None, eps: Optional[float] = None) -> Dict[str, Any]:
        """Noise-free (unless ``noise``) metrics of the current model on ``data`` (all ranks
        together under DDP): ``{"loss", "count", "constraints": {group: {"values": [L],
        "descending": [L]}}}``, the loss being the mean task loss of the last layer and
        the constraint values taken at ``eps`` (default: the eps of the last trained epoch)."""
        data = data if isinstance(data, TrainingData) else TrainingData(data, "data")
        eps = self._eps(max(self.epoch - 1, 0)) if eps is None else [check_eps(eps)] * len(self.groups)
        stats = self._estimate(data, noise, eps, train_mode=False)
        return {"loss": stats.loss(), "count": int(stats.count),
                "constraints": {g.name: {"values": stats.values(i, eps[i]).tolist(),
                                         "descending": stats.descending(i).tolist()}
                                for i, g in enumerate(self.groups)}}

    # -------------------------------------------------------------- fit

    def fit(self, resume: bool = False,
            callback: Optional[Callable[["PrimalDualTrainer", Dict[str, Any]], Any]] = None) -> List[Dict[str, Any]]:
        """Train for ``config.epochs`` epochs (continuing a killed run from
        ``checkpoint_dir/last.pt`` when ``resume`` and that file exists, else starting a
        new run from the model's current weights: global RNG seeded, fresh optimizer).

        Per epoch: the primal pass over the shuffled batches (with a dual step after each
        when ``dual_every="batch"``), the training-set estimate and dual step when
        ``dual_every="epoch"`` (with the training noise), the noise-free validation,
        model selection, then ``best.pt`` (when improved), ``last.pt`` and the logs.

        ``callback(trainer, row)`` runs after every epoch, once its checkpoint is written;
        returning True stops training (the run can be resumed later). Returns ``history``.
        Raises :class:`NonFiniteError` on a NaN/Inf loss, constraint value or multiplier
        (found every ``config.check_every`` steps, naming the first bad epoch, batch and layer).
        """
        cfg = self.config
        path = os.path.join(cfg.checkpoint_dir, LAST) if cfg.checkpoint_dir else None
        if resume and path is None:
            raise ValueError("resume: needs config.checkpoint_dir, got None")
        if resume and os.path.exists(path):
            try:
                state = load_checkpoint(path, map_location="cpu")
            except ValueError as e:
                raise ValueError(f"resume: {e}; resuming needs a valid {LAST}: delete it to start over "
                                 "(sdu-ext: --overwrite)") from None
            self._load_training_state(state)
        else:
            self._fresh_start()
        self._wrap()
        self._finite.clear()
        try:
            self._run(callback)
        finally:
            self._wrapped = self.model
            if self._log is not None:
                self._log.close()
                self._log = None
        if cfg.restore_best and self._best_state is not None:
            self._module().load_state_dict(self._best_state)
        return self.history

    def _fresh_start(self):
        cfg = self.config
        self.epoch, self.history, self.finished, self.stop_reason = 0, [], False, None
        self.best_loss = self.best_epoch = self._best_state = None
        self._stale, self._schedule = 0, make_schedule(cfg)
        seed = cfg.seed
        if seed is None:
            seed = [int.from_bytes(os.urandom(7), "little")]
            if self.world > 1:
                torch.distributed.broadcast_object_list(seed, src=0)
            seed = seed[0]
        self._shuffle_seed = seed
        torch.manual_seed(seed + self.rank)
        gen = getattr(self.noise, "generator", None)
        if isinstance(gen, torch.Generator) and cfg.seed is not None:
            gen.manual_seed(seed_for(seed, -1 - self.rank))
        self.stage = self._stage_of(0)
        self.optimizer = self._make_optimizer(self.stage)

    def _progress(self, **kw):
        enabled = self.config.progress and self.rank == 0 and tqdm is not None
        return tqdm(disable=not enabled, dynamic_ncols=True, **kw) if enabled else None

    def _run(self, callback):
        cfg = self.config
        if self.finished or self.epoch >= cfg.epochs:
            return
        bar = self._progress(total=cfg.epochs, initial=self.epoch, desc=f"train ({cfg.mode})", unit="epoch")
        try:
            for epoch in range(self.epoch, cfg.epochs):
                row, stop = self._epoch(epoch)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{row['train_loss']:.4g}",
                                    val=f"{row['val_loss']:.4g}" if row.get("val_loss") is not None else "-")
                if callback is not None and callback(self, row):
                    break
                if stop:
                    break
        finally:
            if bar is not None:
                bar.close()

    def _epoch(self, epoch):
        cfg = self.config
        t0 = time.perf_counter()
        check_multipliers(self.groups, self.duals, epoch, "at the start of the epoch")
        stage = self._stage_of(epoch)
        if stage != self.stage:
            self.stage = stage
            self.optimizer = self._make_optimizer(stage)
            self._stale, self._schedule = 0, make_schedule(cfg)  # patience/schedule: per layer-wise stage
        eps = self._eps(epoch)
        constrained = cfg.mode == "constrained"
        train_noise = None if cfg.mode == "standard" else self.noise

        self.model.train()
        totals = Stats(self.num_layers, self.groups, self.device)
        lag_sum, steps = torch.zeros((), dtype=torch.float64, device=self.device), 0
        batches = self.train_data.place(train_batches(len(self.train_data), cfg.batch_size, self._shuffle_seed,
                                                      epoch, self.world, self.rank, cfg.drop_last, cfg.shuffle))
        bar = self._progress(total=len(batches), desc=f"epoch {epoch + 1}", unit="batch", leave=False)
        for b, idx in enumerate(batches):
            batch = self.train_data.get(idx, self.device)
            stats, _, lag = self._step(batch, epoch, b, eps)
            totals.merge(stats)
            lag_sum, steps = lag_sum.add_(lag), steps + 1
            read = self._finite.end_step()
            if bar is not None:
                bar.update(1)
                if read:  # the loss shown is the last read one: the bar adds no host read of its own
                    bar.set_postfix(loss=f"{stats.loss():.4g}")
        if bar is not None:
            bar.close()
        self._finite.read()  # the epoch's last checks, before anything is logged or saved
        if steps == 0:
            raise ValueError(f"batch_size: no training batch in an epoch ({len(self.train_data)} samples, "
                             f"batch_size={cfg.batch_size}, drop_last={cfg.drop_last}, {self.world} ranks)")
        train_stats = totals
        if constrained and cfg.dual_every == "epoch":
            train_stats = self._estimate(self.train_data, train_noise, eps, train_mode=True)
            check_loss(train_stats.loss(), None, epoch, None, "task loss (training-set estimate)")
            c_all = [train_stats.values(i, e) for i, e in enumerate(eps)]
            check_values(self.groups, self._active, c_all, epoch, None, "constraint value (training-set estimate)")
            self._dual_step(c_all)
            check_multipliers(self.groups, self.duals, epoch, "after the dual step")

        check_state(self._module(), self.optimizer, epoch)
        val_stats = None
        if self.val_data is not None:
            val_stats = self._estimate(self.val_data, None, eps, train_mode=False)
            check_loss(val_stats.loss(), None, epoch, None, "validation loss")
        self.epoch = epoch + 1

        score = val_stats.loss() if val_stats is not None else None
        lr = float(self.optimizer.param_groups[0]["lr"])
        plateau = self._schedule is not None and self._schedule.step(
            totals.loss() if score is None else score, self.optimizer)
        improved = score is None or self.best_loss is None or score < self.best_loss
        if improved:
            self.best_loss, self.best_epoch = score, self.epoch
            self._best_state = clone_state(self._module().state_dict())
            self._stale = 0
        else:
            self._stale += 1
        stop = ((plateau or cfg.patience is not None and self._stale >= cfg.patience)
                and (stage is None or stage == self.num_layers))
        self.stop_reason = ("plateau" if plateau else "patience") if stop else None
        self.finished = stop or self.epoch >= cfg.epochs

        row = epoch_row(epoch, stage, lr, cfg.mode, self.groups, self.duals, eps, train_stats, val_stats,
                        totals.loss(), float(lag_sum / steps), improved, time.perf_counter() - t0)
        self.history.append(row)
        self._save(improved)
        return row, stop

    # -------------------------------------------------------------- logs

    def _write_logs(self):
        cfg = self.config
        if self._log is None:
            self._log = HistoryLog(cfg.log_dir, cfg.tensorboard)
        self._log.write(cfg.to_dict(), self.metadata, self.history)

    # -------------------------------------------------------------- checkpoints

    def state_dict(self) -> Dict[str, Any]:
        """Everything :meth:`fit` needs to continue exactly (rank-local RNG states gathered)."""
        return {
            "format": FORMAT, "config": self.config.to_dict(), "metadata": self.metadata,
            "epoch": self.epoch, "stage": self.stage, "finished": self.finished,
            "stopped_early": self.stop_reason is not None, "stop_reason": self.stop_reason,
            "model": self._module().state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "dual": {"groups": [g.name for g in self.groups],
                     "layers": [[i + 1 for i in a] for a in self._active],
                     "multipliers": [d.value.to("cpu", copy=True) for d in self.duals],
                     "slacks": [d.slack.to("cpu", copy=True) for d in self.duals],
                     "optimizers": [d.optimizer.state_dict() if d.optimizer is not None else None
                                    for d in self.duals]},
            "rng": rng_state(self.device, self.noise, self.world),
            "shuffle_seed": self._shuffle_seed,
            "best": {"loss": self.best_loss, "epoch": self.best_epoch, "model": self._best_state},
            "stale": self._stale,
            "lr_schedule": self._schedule.state_dict() if self._schedule is not None else None,
            "history": self.history,
        }

    def _save(self, improved):
        cfg = self.config
        state = self.state_dict() if cfg.checkpoint_dir else None
        if self.rank == 0:
            if cfg.checkpoint_dir:
                if improved:
                    save_checkpoint({"format": FORMAT, "kind": "best", "config": cfg.to_dict(),
                                 "metadata": self.metadata, "epoch": self.best_epoch,
                                 "val_loss": self.best_loss, "model": self._best_state},
                                os.path.join(cfg.checkpoint_dir, BEST))
                save_checkpoint(state, os.path.join(cfg.checkpoint_dir, LAST))
            self._write_logs()
        if self.world > 1:
            torch.distributed.barrier()

    def _load_training_state(self, state):
        cfg = self.config
        check_resumable(state, cfg, [g.name for g in self.groups], [[i + 1 for i in a] for a in self._active])
        dual = state["dual"]
        try:
            self._module().load_state_dict(plain_state(state["model"]))
        except RuntimeError as e:
            raise ValueError(f"resume: the checkpoint's weights do not fit this model: {e}") from e
        self.epoch = int(state["epoch"])
        self.stage = state["stage"]
        self.optimizer = self._make_optimizer(self.stage)
        self.optimizer.load_state_dict(state["optimizer"])
        optimizers = dual.get("optimizers") or [None] * len(self.duals)
        for d, nu, u, opt in zip(self.duals, dual["multipliers"], dual["slacks"], optimizers):
            d.load_state_dict({"value": nu, "slack": u, **({"optimizer": opt} if opt is not None else {})})
        self._shuffle_seed = state["shuffle_seed"]
        best = state["best"]
        self.best_loss, self.best_epoch, self._best_state = best["loss"], best["epoch"], best["model"]
        self._stale = int(state["stale"])
        if self._schedule is not None and state.get("lr_schedule") is not None:
            self._schedule.load_state_dict(state["lr_schedule"])
        self.history = list(state["history"])
        self.stop_reason = state.get("stop_reason", "patience" if state["stopped_early"] else None)
        self.finished = self.stop_reason is not None or self.epoch >= cfg.epochs
        set_rng_state(state["rng"], self.device, self.noise, self.world, self.rank,
                      (self._shuffle_seed, 10_000 + self.epoch))
