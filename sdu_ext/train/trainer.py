"""Primal-dual training of unrolled networks with per-layer descent constraints (SPEC section 4).

The trainer is generic over models: anything whose forward returns the stacked
iterates (L+1, B, ...) trains, with a per-sample task loss on the output and
residuals given by :class:`~sdu_ext.train.DescentConstraints` groups.
"""
import copy
import csv
import hashlib
import io
import math
import os
import time
import warnings

import torch
from torch import nn

from ..reference import RATIO_FLOOR
from .checkpoint import FORMAT, atomic_save, atomic_write_json, atomic_write_text, load_checkpoint
from .config import RESUMABLE, TrainConfig, check_eps
from .constraints import DescentConstraints, Stats

try:
    from tqdm.auto import tqdm
except ImportError:  # pragma: no cover - tqdm is a dependency
    tqdm = None

LAST = "last.pt"
BEST = "best.pt"


class NonFiniteError(FloatingPointError):
    """Training produced a NaN/Inf task loss, constraint value or multiplier.

    Attributes: ``epoch`` (1-based), ``layer`` (1-based, or None when no layer is at fault).
    """

    def __init__(self, message, epoch=None, layer=None):
        super().__init__(message)
        self.epoch = epoch
        self.layer = layer


def squared_error(output, batch):
    """The LISTA task loss per sample: ``1/2 ||output_b - batch[1]_b||^2``, (B,).

    ``output`` (B, ...) is a layer's output, ``batch[1]`` the reference (e.g. y*), same shape.
    """
    return 0.5 * (output - batch[1]).pow(2).flatten(1).sum(dim=1)


# ------------------------------------------------------------------ helpers

def _dist():
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size(), torch.distributed.get_rank()
    return 1, 0


def _to(obj, device):
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=True)
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to(o, device) for o in obj)
    if isinstance(obj, dict):
        return {k: _to(v, device) for k, v in obj.items()}
    return obj


class _Data:
    """Indexable training/validation data: a tuple of tensors (fast path: one gather
    per tensor), a TensorDataset, or any map-style Dataset (collated per batch)."""

    def __init__(self, data, name):
        if isinstance(data, torch.utils.data.TensorDataset):
            data = data.tensors
        if isinstance(data, torch.Tensor):
            data = (data,)
        if isinstance(data, (tuple, list)) and data and all(isinstance(t, torch.Tensor) for t in data):
            sizes = {t.shape[0] if t.dim() else -1 for t in data}
            if len(sizes) != 1 or -1 in sizes:
                raise ValueError(f"{name}: expected tensors with one common first (sample) dimension, "
                                 f"got shapes {[tuple(t.shape) for t in data]}")
            self.tensors, self.dataset, self.size = tuple(data), None, data[0].shape[0]
        elif hasattr(data, "__getitem__") and hasattr(data, "__len__") and not isinstance(data, (str, bytes)):
            self.tensors, self.dataset, self.size = None, data, len(data)
        else:
            raise ValueError(f"{name}: expected a tuple of tensors or a map-style Dataset, got {type(data).__name__}")
        if self.size < 1:
            raise ValueError(f"{name}: expected at least one sample, got an empty data set")

    def __len__(self):
        return self.size

    def get(self, idx, device):
        if self.tensors is not None:
            return tuple(t[idx].to(device, non_blocking=True) for t in self.tensors)
        batch = torch.utils.data.default_collate([self.dataset[i] for i in idx.tolist()])
        return _to(batch, device)


def _clone_state(state):
    return {k: v.detach().to("cpu", copy=True) if isinstance(v, torch.Tensor) else copy.deepcopy(v)
            for k, v in state.items()}


def _layer_parameter_sets(model, num_layers):
    """Per-layer parameter lists from the ModuleLists/ParameterLists of length L, and
    the remaining (shared) parameters."""
    per_layer = [[] for _ in range(num_layers)]
    claimed = set()
    for _, child in model.named_modules():
        if isinstance(child, (nn.ModuleList, nn.ParameterList)) and len(child) == num_layers:
            for k, item in enumerate(child):
                params = item.parameters() if isinstance(item, nn.Module) else [item]
                for p in params:
                    if id(p) not in claimed:
                        claimed.add(id(p))
                        per_layer[k].append(p)
    shared = [p for p in model.parameters() if id(p) not in claimed]
    return per_layer, shared


def _seed_for(seed, epoch):
    digest = hashlib.sha256(f"{seed}:{epoch}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


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
            rejected for ``unconstrained``). Validation is always noise-free.
        problem: problem for the gradient residuals (default: ``model.problem`` if any).
        optimizer: factory ``optimizer(params) -> torch.optim.Optimizer`` (default: the
            ``config.optimizer`` class with ``lr=config.lr``).
        layer_parameters: ``layer_parameters(model, k) -> params`` of 1-based layer k, for
            layer-wise training with frozen layers (default: element k-1 of every
            ModuleList/ParameterList of length L, plus the parameters outside them).
        metadata: a dict of plain values stored in every checkpoint (e.g. how to rebuild
            the model).
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

    def __init__(self, model, train_data, val_data=None, config=None, constraints=None, *, loss=None,
                 forward=None, noise=None, problem=None, optimizer=None, layer_parameters=None, metadata=None):
        if not isinstance(model, nn.Module):
            raise ValueError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
        self.config = cfg = TrainConfig() if config is None else config
        if not isinstance(cfg, TrainConfig):
            raise ValueError(f"config: expected a TrainConfig, got {type(cfg).__name__}")
        if isinstance(constraints, DescentConstraints):
            constraints = [constraints]
        self.groups = list(constraints) if constraints is not None else []
        for g in self.groups:
            if not isinstance(g, DescentConstraints):
                raise ValueError(f"constraints: expected DescentConstraints, got {type(g).__name__}")
        names = [g.name for g in self.groups]
        if len(set(names)) != len(names):
            raise ValueError(f"constraints: expected distinct group names, got {names}")
        if cfg.mode == "constrained" and not self.groups:
            raise ValueError("constraints: mode='constrained' needs at least one DescentConstraints, got None")
        if cfg.mode == "noisy" and noise is None:
            raise ValueError("noise: mode='noisy' trains with a noise hook, got None")
        if cfg.mode == "unconstrained" and noise is not None:
            raise ValueError("noise: mode='unconstrained' trains without noise (use mode='noisy'), got a hook")
        for name, fn in (("loss", loss), ("forward", forward), ("noise", noise), ("optimizer", optimizer),
                         ("layer_parameters", layer_parameters)):
            if fn is not None and not callable(fn):
                raise ValueError(f"{name}: expected a callable, got {type(fn).__name__}")
        if metadata is not None and not isinstance(metadata, dict):
            raise ValueError(f"metadata: expected a dict, got {type(metadata).__name__}")

        self.world, self.rank = _dist()
        device = torch.device(cfg.device)
        if device.type == "cuda" and device.index is None and self.world > 1:
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        self.device = device
        self.model = model.to(device)
        self.noise = noise.to(device) if isinstance(noise, nn.Module) else noise
        self.loss_fn = squared_error if loss is None else loss
        self._forward = forward
        self.problem = problem if problem is not None else getattr(self.model, "problem", None)
        self._optimizer_factory = optimizer
        self._layer_parameters = layer_parameters
        self.metadata = dict(metadata or {})
        self.train_data = _Data(train_data, "train_data")
        self.val_data = _Data(val_data, "val_data") if val_data is not None else None

        self.num_layers = self._probe_layers()
        L = self.num_layers
        self._active = [g.active(L) for g in self.groups]
        if cfg.mode == "layerwise" and cfg.epochs < L:
            raise ValueError(f"epochs: layer-wise training needs at least one epoch per layer "
                             f"({L} layers), got {cfg.epochs}")
        if cfg.mode == "layerwise" and not cfg.layerwise_finetune and layer_parameters is None:
            per_layer, _ = _layer_parameter_sets(self.model, L)
            if not all(per_layer):
                raise ValueError(
                    "layer_parameters: layer-wise training with frozen earlier layers needs per-layer "
                    f"parameters (a ModuleList or ParameterList of length {L}) or a layer_parameters "
                    f"callable; {type(self.model).__name__} has none (or ties its layers); "
                    "set layerwise_finetune=True to train all parameters per stage")

        self._nu = [torch.zeros(len(a), dtype=torch.float64) for a in self._active]
        self._u = [torch.zeros(len(a), dtype=torch.float64) for a in self._active]
        self.epoch = 0          # completed epochs
        self.stage = None
        self.optimizer = None
        self.history = []
        self.best_loss = None
        self.best_epoch = None
        self._best_state = None
        self._stale = 0
        self._stopped = False
        self.finished = False
        self._shuffle_seed = cfg.seed
        self._wrapped = self.model
        self._tb = None

    # -------------------------------------------------------------- public state

    @property
    def multipliers(self):
        """Dict group name -> (K,) float64 multipliers of the constrained layers."""
        return {g.name: nu.clone() for g, nu in zip(self.groups, self._nu)}

    @property
    def slacks(self):
        """Dict group name -> (K,) float64 resilient relaxations (zeros unless resilient)."""
        return {g.name: u.clone() for g, u in zip(self.groups, self._u)}

    def constrained_layers(self):
        """Dict group name -> 1-based indices of the layers with a multiplier."""
        return {g.name: [i + 1 for i in a] for g, a in zip(self.groups, self._active)}

    # -------------------------------------------------------------- setup

    def _probe_layers(self):
        L = getattr(self.model, "num_layers", None)
        if isinstance(L, int) and L >= 1:
            return L
        idx = torch.arange(1)
        with torch.no_grad(), torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            it = self._iterates(self.model, self.train_data.get(idx, self.device), None)
        return it.shape[0] - 1

    def _iterates(self, model, batch, noise):
        if self._forward is not None:
            it = self._forward(model, batch, noise)
        elif noise is None:
            it = model(batch[0], return_all=True)
        else:
            it = model(batch[0], return_all=True, noise=noise)
        if not isinstance(it, torch.Tensor) or it.dim() < 3:
            got = tuple(it.shape) if isinstance(it, torch.Tensor) else type(it).__name__
            raise ValueError(f"model: expected the forward pass to return stacked iterates (L+1, B, ...), got {got}")
        return it

    def _stage_of(self, epoch):
        if self.config.mode != "layerwise":
            return None
        L = self.num_layers
        return min(L, epoch * L // self.config.epochs + 1)

    def _params_for(self, stage):
        if stage is None or self.config.layerwise_finetune:
            return [p for p in self.model.parameters() if p.requires_grad]
        if self._layer_parameters is not None:
            params = list(self._layer_parameters(self.model, stage))
        else:
            per_layer, shared = _layer_parameter_sets(self.model, self.num_layers)
            params = per_layer[stage - 1] + shared
        return [p for p in params if p.requires_grad]

    def _make_optimizer(self, stage):
        params = self._params_for(stage)
        if not params:
            raise ValueError(f"model: no trainable parameters{'' if stage is None else f' for layer {stage}'}")
        if self._optimizer_factory is not None:
            return self._optimizer_factory(params)
        cls = getattr(torch.optim, self.config.optimizer)
        return cls(params, lr=self.config.lr, **self.config.optimizer_kwargs)

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

    # -------------------------------------------------------------- batches

    def _train_batches(self, epoch):
        """This rank's index shards of the global batches of ``epoch`` (same order on every rank)."""
        n, B = len(self.train_data), self.config.batch_size
        g = torch.Generator().manual_seed(_seed_for(self._shuffle_seed, epoch))
        perm = torch.randperm(n, generator=g)
        out = []
        for start in range(0, n, B):
            idx = perm[start:start + B]
            if idx.numel() < B and (self.config.drop_last or idx.numel() < self.world):
                continue
            out.append(torch.tensor_split(idx, self.world)[self.rank])
        return out

    def _eval_batches(self, data):
        shard = torch.tensor_split(torch.arange(len(data)), self.world)[self.rank]
        return list(torch.split(shard, self.config.batch_size)) if shard.numel() else []

    # -------------------------------------------------------------- checks

    def _fail(self, what, epoch, layer=None, extra=""):
        where = f"epoch {epoch + 1}" + (f", layer {layer}" if layer is not None else "")
        raise NonFiniteError(f"training stopped: non-finite {what} at {where}{extra}", epoch + 1, layer)

    def _check_loss(self, value, iterates, epoch, batch_index, what="task loss"):
        if math.isfinite(value):
            return
        layer, extra = None, ""
        if iterates is not None:
            bad = (~torch.isfinite(iterates.detach()).flatten(2).all(dim=2)).any(dim=1)
            hits = torch.nonzero(bad).flatten().tolist()
            if hits:
                layer = hits[0]
                extra = f" (the first non-finite iterate is the output of layer {layer}" + \
                        (" (the initial point)" if layer == 0 else "") + ")"
            else:
                extra = " (all iterates are finite: the loss function produced it)"
        if batch_index is not None:
            extra = f", batch {batch_index + 1}" + extra
        self._fail(f"{what} ({value})", epoch, layer, extra)

    def _check_values(self, c_all, epoch, batch_index, what="constraint value"):
        # Only the values that enter the Lagrangian and the dual step; elsewhere they are
        # diagnostics (and a non-finite iterate already shows in the loss).
        if self.config.mode != "constrained":
            return
        for g, act, c in zip(self.groups, self._active, c_all):
            bad = [l for l in torch.nonzero(~torch.isfinite(c)).flatten().tolist() if l in act]
            if bad:
                l = bad[0]
                extra = "" if batch_index is None else f", batch {batch_index + 1}"
                self._fail(f"{what} c_{l + 1} ({float(c[l])}) of group {g.name!r}", epoch, l + 1, extra)

    def _check_multipliers(self, epoch, when):
        for g, act, nu, u in zip(self.groups, self._active, self._nu, self._u):
            for name, t in (("multiplier nu", nu), ("resilient slack u", u)):
                bad = torch.nonzero(~torch.isfinite(t)).flatten().tolist()
                if bad:
                    l = act[bad[0]] + 1
                    self._fail(f"{name}_{l} ({float(t[bad[0]])}) of group {g.name!r}", epoch, l, f" ({when})")

    # -------------------------------------------------------------- one step

    def _evaluate_groups(self, iterates, batch, eps, grad):
        if not self.groups:
            return []
        if grad:
            return [g(iterates, batch, eps=e, problem=self.problem) for g, e in zip(self.groups, eps)]
        with torch.no_grad():
            it = iterates.detach()
            return [g(it, batch, eps=e, problem=self.problem) for g, e in zip(self.groups, eps)]

    def _per_sample_loss(self, output, batch):
        loss = self.loss_fn(output, batch)
        if not isinstance(loss, torch.Tensor) or tuple(loss.shape) != (output.shape[0],):
            got = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
            raise ValueError(f"loss: expected per-sample losses of shape ({output.shape[0]},) = (B,), got {got}")
        return loss

    def _surrogate(self, i, ev, stats, n_local):
        """Local term whose DDP-averaged gradient is the gradient of the global c (L,)."""
        W, N = self.world, stats.count
        if self.groups[i].form != "ratio_of_means":
            return ev.values * (n_local * W / N)
        S = stats.norm_sums(i).to(ev.norms.device, ev.norms.dtype)
        a, b_raw = S[1:] / N, S[:-1] / N
        b = b_raw.clamp_min(RATIO_FLOOR)
        cur, prev = ev.norms[1:].sum(dim=1), ev.norms[:-1].sum(dim=1)
        return W * (cur / (N * b) - (b_raw >= RATIO_FLOOR).to(b.dtype) * a * prev / (N * b * b))

    def _step(self, batch, epoch, batch_index, eps):
        cfg = self.config
        constrained = cfg.mode == "constrained"
        train_noise = None if cfg.mode == "unconstrained" else self.noise
        iterates = self._iterates(self._wrapped, batch, train_noise)
        out = iterates[self.stage] if self.stage is not None else iterates[-1]
        per_loss = self._per_sample_loss(out, batch)
        evals = self._evaluate_groups(iterates, batch, eps, grad=constrained)
        stats = Stats(self.num_layers, self.groups, self.device).add(per_loss, evals).all_reduce()

        loss_value = stats.loss()
        self._check_loss(loss_value, iterates, epoch, batch_index)
        c_all = [stats.values(i, e) for i, e in enumerate(eps)]
        self._check_values(c_all, epoch, batch_index)

        if self.world == 1:
            lagrangian = per_loss.mean()
        else:
            lagrangian = per_loss.sum() * (self.world / stats.count)
        lag_value = loss_value
        if constrained:
            for i, (ev, act, nu) in enumerate(zip(evals, self._active, self._nu)):
                c = ev.values if self.world == 1 else self._surrogate(i, ev, stats, per_loss.shape[0])
                lagrangian = lagrangian + (nu.to(c.device, c.dtype) * c[act]).sum()
                lag_value += float((nu * (c_all[i][act] - self._u[i])).sum())
                if cfg.resilient:
                    lag_value += 0.5 * cfg.resilient_cost * float(self._u[i].pow(2).sum())
        self.model.zero_grad(set_to_none=True)
        lagrangian.backward()
        self.optimizer.step()
        return stats, c_all, lag_value

    def _dual_step(self, c_all, epoch):
        cfg = self.config
        for i, act in enumerate(self._active):
            c = c_all[i][act].to(torch.float64)
            nu, u = self._nu[i], self._u[i]
            if cfg.resilient:
                self._nu[i] = (nu + cfg.lr_dual * (c - u)).clamp_min(0.0)
                self._u[i] = (u - cfg.lr_dual * (cfg.resilient_cost * u - nu)).clamp_min(0.0)
            else:
                self._nu[i] = (nu + cfg.lr_dual * c).clamp_min(0.0)
        self._check_multipliers(epoch, "after the dual step")

    # -------------------------------------------------------------- estimates

    @torch.no_grad()
    def _estimate(self, data, noise, eps, train_mode):
        self.model.train(train_mode)
        stats = Stats(self.num_layers, self.groups, self.device)
        for idx in self._eval_batches(data):
            batch = data.get(idx, self.device)
            it = self._iterates(self.model, batch, noise)
            stats.add(self._per_sample_loss(it[-1], batch), self._evaluate_groups(it, batch, eps, grad=False))
        return stats.all_reduce()

    def evaluate(self, data, noise=None, eps=None):
        """Noise-free (unless ``noise``) metrics of the current model on ``data`` (all ranks
        together under DDP): ``{"loss", "count", "constraints": {group: {"values": [L],
        "descending": [L]}}}``, the loss being the mean task loss of the last layer and
        the constraint values taken at ``eps`` (default: the eps of the last trained epoch)."""
        data = data if isinstance(data, _Data) else _Data(data, "data")
        eps = self._eps(max(self.epoch - 1, 0)) if eps is None else [check_eps(eps)] * len(self.groups)
        stats = self._estimate(data, noise, eps, train_mode=False)
        return {"loss": stats.loss(), "count": int(stats.count),
                "constraints": {g.name: {"values": stats.values(i, eps[i]).tolist(),
                                         "descending": stats.descending(i).tolist()}
                                for i, g in enumerate(self.groups)}}

    # -------------------------------------------------------------- fit

    def fit(self, resume=False, callback=None):
        """Train for ``config.epochs`` epochs (continuing a killed run from
        ``checkpoint_dir/last.pt`` when ``resume`` and that file exists, else starting a
        new run from the model's current weights: global RNG seeded, fresh optimizer).

        Per epoch: the primal pass over the shuffled batches (with a dual step after each
        when ``dual_every="batch"``), the training-set estimate and dual step when
        ``dual_every="epoch"`` (with the training noise), the noise-free validation,
        model selection, then ``best.pt`` (when improved), ``last.pt`` and the logs.

        ``callback(trainer, row)`` runs after every epoch, once its checkpoint is written;
        returning True stops training (the run can be resumed later). Returns ``history``.
        Raises :class:`NonFiniteError` on a NaN/Inf loss, constraint value or multiplier.
        """
        cfg = self.config
        path = os.path.join(cfg.checkpoint_dir, LAST) if cfg.checkpoint_dir else None
        if resume and path is None:
            raise ValueError("resume: needs config.checkpoint_dir, got None")
        if resume and os.path.exists(path):
            self._load_training_state(load_checkpoint(path, map_location="cpu"))
        else:
            self._fresh_start()
        self._wrap()
        try:
            self._run(callback)
        finally:
            self._wrapped = self.model
            if self._tb is not None:
                self._tb.close()
                self._tb = None
        if cfg.restore_best and self._best_state is not None:
            self.model.load_state_dict(self._best_state)
        return self.history

    def _fresh_start(self):
        cfg = self.config
        self.epoch, self.history, self.finished, self._stopped = 0, [], False, False
        self.best_loss = self.best_epoch = self._best_state = None
        self._stale = 0
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
            gen.manual_seed(_seed_for(seed, -1 - self.rank))
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
        self._check_multipliers(epoch, "at the start of the epoch")
        stage = self._stage_of(epoch)
        if stage != self.stage:
            self.stage = stage
            self.optimizer = self._make_optimizer(stage)
            self._stale = 0  # patience counts within the last layer-wise stage only
        eps = self._eps(epoch)
        constrained = cfg.mode == "constrained"
        train_noise = None if cfg.mode == "unconstrained" else self.noise

        self.model.train()
        totals = Stats(self.num_layers, self.groups, self.device)
        lag_sum, steps = 0.0, 0
        batches = self._train_batches(epoch)
        bar = self._progress(total=len(batches), desc=f"epoch {epoch + 1}", unit="batch", leave=False)
        for b, idx in enumerate(batches):
            batch = self.train_data.get(idx, self.device)
            stats, c_all, lag = self._step(batch, epoch, b, eps)
            totals.merge(stats)
            lag_sum, steps = lag_sum + lag, steps + 1
            if constrained and cfg.dual_every == "batch":
                self._dual_step(c_all, epoch)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{stats.loss():.4g}")
        if bar is not None:
            bar.close()
        if steps == 0:
            raise ValueError(f"batch_size: no training batch in an epoch ({len(self.train_data)} samples, "
                             f"batch_size={cfg.batch_size}, drop_last={cfg.drop_last}, {self.world} ranks)")
        train_stats = totals
        if constrained and cfg.dual_every == "epoch":
            train_stats = self._estimate(self.train_data, train_noise, eps, train_mode=True)
            self._check_loss(train_stats.loss(), None, epoch, None, "task loss (training-set estimate)")
            c_all = [train_stats.values(i, e) for i, e in enumerate(eps)]
            self._check_values(c_all, epoch, None, "constraint value (training-set estimate)")
            self._dual_step(c_all, epoch)

        val_stats = None
        if self.val_data is not None:
            val_stats = self._estimate(self.val_data, None, eps, train_mode=False)
            self._check_loss(val_stats.loss(), None, epoch, None, "validation loss")
        self.epoch = epoch + 1

        score = val_stats.loss() if val_stats is not None else None
        improved = score is None or self.best_loss is None or score < self.best_loss
        if improved:
            self.best_loss, self.best_epoch = score, self.epoch
            self._best_state = _clone_state(self.model.state_dict())
            self._stale = 0
        else:
            self._stale += 1
        stop = (cfg.patience is not None and self._stale >= cfg.patience
                and (stage is None or stage == self.num_layers))
        self._stopped = stop
        self.finished = stop or self.epoch >= cfg.epochs

        row = self._row(epoch, stage, eps, train_stats, val_stats,
                        totals.loss(), lag_sum / steps, improved, time.perf_counter() - t0)
        self.history.append(row)
        self._save(improved)
        return row, stop

    # -------------------------------------------------------------- logs

    def _prefix(self, g):
        return "" if len(self.groups) == 1 else f"{g.name}_"

    def _row(self, epoch, stage, eps, train_stats, val_stats, batch_loss, lagrangian, improved, seconds):
        cfg = self.config
        row = {"epoch": epoch + 1}
        if stage is not None:
            row["stage"] = stage
        row["lr"] = float(self.optimizer.param_groups[0]["lr"])
        row["train_loss"] = batch_loss
        if cfg.mode == "constrained":
            row["lagrangian"] = lagrangian
        if val_stats is not None:
            row["val_loss"] = val_stats.loss()
        row["best"] = bool(improved)
        L = self.num_layers
        for i, g in enumerate(self.groups):
            p = self._prefix(g)
            row[f"{p}eps"] = eps[i]
            c_tr, d_tr = train_stats.values(i, eps[i]).tolist(), train_stats.descending(i).tolist()
            for l in range(L):
                row[f"{p}c_train_{l + 1}"] = c_tr[l]
            if val_stats is not None:
                c_va = val_stats.values(i, eps[i]).tolist()
                for l in range(L):
                    row[f"{p}c_val_{l + 1}"] = c_va[l]
            for l in range(L):
                row[f"{p}desc_train_{l + 1}"] = d_tr[l]
            if val_stats is not None:
                d_va = val_stats.descending(i).tolist()
                for l in range(L):
                    row[f"{p}desc_val_{l + 1}"] = d_va[l]
            if cfg.mode == "constrained":
                for k, l in enumerate(self._active[i]):
                    row[f"{p}nu_{l + 1}"] = float(self._nu[i][k])
                if cfg.resilient:
                    for k, l in enumerate(self._active[i]):
                        row[f"{p}u_{l + 1}"] = float(self._u[i][k])
        row["time_s"] = seconds
        return row

    def _write_logs(self):
        cfg = self.config
        if cfg.log_dir is None or not self.history:
            return
        atomic_write_json({"config": cfg.to_dict(), "metadata": self.metadata, "history": self.history},
                          os.path.join(cfg.log_dir, "history.json"))
        buf = io.StringIO()
        fields = list(self.history[0])
        for row in self.history[1:]:
            fields += [k for k in row if k not in fields]
        writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.history)
        atomic_write_text(buf.getvalue(), os.path.join(cfg.log_dir, "history.csv"))
        if cfg.tensorboard:
            if self._tb is None:
                try:
                    from torch.utils.tensorboard import SummaryWriter
                except ImportError:
                    return
                self._tb = SummaryWriter(cfg.log_dir)
            row = self.history[-1]
            for k, v in row.items():
                if k != "epoch" and isinstance(v, (int, float)) and not isinstance(v, bool):
                    self._tb.add_scalar(k, v, row["epoch"])
            self._tb.flush()

    # -------------------------------------------------------------- checkpoints

    def _rng_state(self):
        state = {"torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            state["cuda"] = torch.cuda.get_rng_state(self.device)
        gen = getattr(self.noise, "generator", None)
        if isinstance(gen, torch.Generator):
            state["noise"] = gen.get_state()
        if self.world > 1:
            gathered = [None] * self.world
            torch.distributed.all_gather_object(gathered, state)
            return gathered
        return [state]

    def _set_rng_state(self, states):
        if len(states) != self.world:
            warnings.warn(f"resume: the checkpoint holds RNG states of {len(states)} processes, this run has "
                          f"{self.world}; random draws are reseeded and will differ from an uninterrupted run")
            torch.manual_seed(_seed_for(self._shuffle_seed, 10_000 + self.epoch) + self.rank)
            return
        state = states[self.rank]
        torch.set_rng_state(state["torch"])
        if "cuda" in state and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda"], self.device)
        gen = getattr(self.noise, "generator", None)
        if isinstance(gen, torch.Generator) and "noise" in state:
            gen.set_state(state["noise"])

    def state_dict(self):
        """Everything :meth:`fit` needs to continue exactly (rank-local RNG states gathered)."""
        return {
            "format": FORMAT,
            "config": self.config.to_dict(),
            "metadata": self.metadata,
            "epoch": self.epoch,
            "stage": self.stage,
            "finished": self.finished,
            "stopped_early": self._stopped,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "dual": {"groups": [g.name for g in self.groups],
                     "layers": [[i + 1 for i in a] for a in self._active],
                     "multipliers": [nu.clone() for nu in self._nu],
                     "slacks": [u.clone() for u in self._u]},
            "rng": self._rng_state(),
            "shuffle_seed": self._shuffle_seed,
            "best": {"loss": self.best_loss, "epoch": self.best_epoch, "model": self._best_state},
            "stale": self._stale,
            "history": self.history,
        }

    def _save(self, improved):
        cfg = self.config
        state = self.state_dict() if cfg.checkpoint_dir else None
        if self.rank == 0:
            if cfg.checkpoint_dir:
                if improved:
                    atomic_save({"format": FORMAT, "kind": "best", "config": cfg.to_dict(),
                                 "metadata": self.metadata, "epoch": self.best_epoch,
                                 "val_loss": self.best_loss, "model": self._best_state},
                                os.path.join(cfg.checkpoint_dir, BEST))
                atomic_save(state, os.path.join(cfg.checkpoint_dir, LAST))
            self._write_logs()
        if self.world > 1:
            torch.distributed.barrier()

    def _load_training_state(self, state):
        cfg = self.config
        saved = state["config"]
        mine = cfg.to_dict()
        keep = set(RESUMABLE) - ({"epochs"} if cfg.mode == "layerwise" else set())
        diff = [k for k in mine if k not in keep and saved.get(k) != mine[k]]
        if diff:
            pairs = ", ".join(f"{k}={saved.get(k)!r} (this run: {mine[k]!r})" for k in diff)
            raise ValueError(f"resume: the checkpoint was written with a different configuration: {pairs}")
        dual = state["dual"]
        names = [g.name for g in self.groups]
        layers = [[i + 1 for i in a] for a in self._active]
        if dual["groups"] != names or dual["layers"] != layers:
            raise ValueError(f"resume: the checkpoint constrains groups {dual['groups']} on layers "
                             f"{dual['layers']}, this run {names} on {layers}")
        try:
            self.model.load_state_dict(state["model"])
        except RuntimeError as e:
            raise ValueError(f"resume: the checkpoint's weights do not fit this model: {e}") from e
        self.epoch = int(state["epoch"])
        self.stage = state["stage"]
        self.optimizer = self._make_optimizer(self.stage)
        self.optimizer.load_state_dict(state["optimizer"])
        self._nu = [t.to(torch.float64).clone() for t in dual["multipliers"]]
        self._u = [t.to(torch.float64).clone() for t in dual["slacks"]]
        self._shuffle_seed = state["shuffle_seed"]
        best = state["best"]
        self.best_loss, self.best_epoch, self._best_state = best["loss"], best["epoch"], best["model"]
        self._stale = int(state["stale"])
        self.history = list(state["history"])
        self._stopped = bool(state["stopped_early"])
        self.finished = self._stopped or self.epoch >= cfg.epochs
        self._set_rng_state(state["rng"])
