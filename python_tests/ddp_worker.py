"""Shared fixtures of the trainer tests, and the worker of the two-process DDP test.

Run as a script under ``torchrun --nproc-per-node 2 ddp_worker.py OUT`` (or with
RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT set by hand, which is what torchrun
does): every rank trains each case of :data:`CASES` on its shard of the same global
batches and saves what it ends with to ``OUT/<case>.rank<r>.pt``; the test compares
those with one process training on the whole global batches.
"""
import os
import sys

import torch

N, M, L, ALPHA = 20, 40, 4, 0.1


def make_problem(seed=0, n=N, m=M, n_train=512, n_val=128, alpha=ALPHA, p=0.1, dtype=torch.float32):
    """A tiny synthetic LASSO: D (n, m) with unit columns, Bernoulli(p) x N(0, 1) codes,
    noiseless signals, and y* from 1000 FISTA steps (float64).

    Samples whose optimum is y* = 0 are dropped: a layer that outputs exactly y* makes
    the next ratio r_l / r_{l-1} divide by the floor, which the ratio forms of the
    constraints cannot absorb. Returns ``D, (x_train, y_train), (x_val, y_val)``.
    """
    g = torch.Generator().manual_seed(seed)
    f64 = torch.float64
    D = torch.randn(n, m, generator=g, dtype=f64) / n ** 0.5
    D = D / D.norm(dim=0, keepdim=True)
    total = 2 * (n_train + n_val)
    codes = (torch.rand(total, m, generator=g, dtype=f64) < p) * torch.randn(total, m, generator=g, dtype=f64)
    x = codes @ D.T
    lip = float(torch.linalg.matrix_norm(D, ord=2)) ** 2
    y = z = torch.zeros(total, m, dtype=f64)
    t = 1.0
    for _ in range(1000):
        v = z - (z @ D.T - x) @ D / lip
        y_new = torch.sign(v) * (v.abs() - alpha / lip).clamp_min(0)
        t_new = (1 + (1 + 4 * t * t) ** 0.5) / 2
        z = y_new + (t - 1) / t_new * (y_new - y)
        y, t = y_new, t_new
    keep = y.abs().sum(dim=1) > 0
    x, y = x[keep], y[keep]
    assert x.shape[0] >= n_train + n_val
    D, x, y = D.to(dtype), x.to(dtype), y.to(dtype)
    return D, (x[:n_train], y[:n_train]), (x[n_train:n_train + n_val], y[n_train:n_train + n_val])


# name -> (TrainConfig overrides, DescentConstraints kwargs); float64, 3 epochs, global
# batch 64 over 301 training samples: the last batch (45) splits 23 / 22 across ranks.
CASES = {
    "mean_ratio-batch": (dict(dual_every="batch"), dict(residual="distance", form="mean_ratio")),
    "ratio_of_means-epoch-resilient": (dict(dual_every="epoch", resilient=True, resilient_cost=2.0),
                                       dict(residual="distance", form="ratio_of_means")),
    "ratio_of_means-subgradient-layers": (dict(dual_every="batch", eps_schedule=((0, 0.0), (2, 0.1))),
                                          dict(residual="subgradient", form="ratio_of_means", layers=[2, 3, 4])),
    "difference-gradient": (dict(dual_every="batch"), dict(residual="gradient", form="difference")),
    "layerwise": (dict(mode="layerwise", epochs=4), dict(residual="distance", form="mean_ratio")),
}


RESUMED = "mean_ratio-batch"  # the case also checkpointed, then resumed to 5 epochs


def forward_from_y0(model, batch, noise):
    """Iterates from the per-sample initial point ``batch[2]``: the ``paper`` LISTA draws
    y_0 per forward from each rank's RNG, which a single process cannot reproduce."""
    return model(batch[0], return_all=True, noise=noise, y0=batch[2])


def run_case(name, checkpoint_dir=None, epochs=None, resume=False):
    """Train case ``name`` in this process (one rank of a DDP job, or alone) and return
    ``{"model": state_dict, "multipliers": ..., "slacks": ..., "history": ..., "saves": n}``
    (``saves``: checkpoint files this process wrote)."""
    from sdu_ext.models import LISTA
    from sdu_ext.train import DescentConstraints, PrimalDualTrainer, TrainConfig, trainer as trainer_module

    overrides, constraint_kw = CASES[name]
    D, train, val = make_problem(seed=3, n_train=301, n_val=50, dtype=torch.float64)
    g = torch.Generator().manual_seed(11)
    train = train + (torch.randn(train[0].shape[0], M, generator=g, dtype=torch.float64) / 100,)
    val = val + (torch.randn(val[0].shape[0], M, generator=g, dtype=torch.float64) / 100,)
    torch.manual_seed(0)
    model = LISTA(D, ALPHA, L, init="paper")
    kw = dict(epochs=3, batch_size=64, lr=3e-3, lr_dual=0.5, eps=0.05, seed=7, checkpoint_dir=checkpoint_dir)
    kw.update(overrides)
    if epochs is not None:
        kw["epochs"] = epochs
    trainer = PrimalDualTrainer(model, train, val, TrainConfig(**kw), DescentConstraints(**constraint_kw),
                                forward=forward_from_y0)
    saves = []
    real_save = trainer_module.save_checkpoint
    trainer_module.save_checkpoint = lambda obj, path: (saves.append(path), real_save(obj, path))
    try:
        history = trainer.fit(resume=resume)
    finally:
        trainer_module.save_checkpoint = real_save
    return {"model": model.state_dict(), "multipliers": trainer.multipliers, "slacks": trainer.slacks,
            "history": [{k: v for k, v in row.items() if k != "time_s"} for row in history], "saves": len(saves)}


def run_cooper(distributed):
    """The constrained LISTA problem through the cooper adapter (float64, SGD dual step every
    batch, global batches in the stored order), on this rank's shard of every global batch
    (DDP) or alone on the whole batches with the trainer (``distributed=False``): returns
    ``{"model": state_dict, "multipliers": (L,)}``."""
    from sdu_ext.models import LISTA
    from sdu_ext.train import DescentConstraints, PrimalDualTrainer, TrainConfig

    D, train, _ = make_problem(seed=5, n_train=150, n_val=10, dtype=torch.float64)
    torch.manual_seed(0)
    model = LISTA(D, ALPHA, L, init="ista")
    group = DescentConstraints("distance", "ratio_of_means", eps=0.3)
    lr, lr_dual, batch_size, epochs = 5e-3, 2.0, 40, 2
    if not distributed:
        trainer = PrimalDualTrainer(model, train, None, TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr,
                                                                    lr_dual=lr_dual, shuffle=False), group)
        trainer.fit()
        return {"model": model.state_dict(), "multipliers": trainer.multipliers["descent"]}
    from sdu_ext.integrations.cooper import DescentProblem, simultaneous_optimizer
    world, rank = torch.distributed.get_world_size(), torch.distributed.get_rank()
    wrapped = torch.nn.parallel.DistributedDataParallel(model)
    problem = DescentProblem(wrapped, group)
    optimizer = simultaneous_optimizer(problem, torch.optim.Adam(model.parameters(), lr=lr), lr_dual)
    for _ in range(epochs):
        for start in range(0, train[0].shape[0], batch_size):
            shard = torch.tensor_split(torch.arange(start, min(start + batch_size, train[0].shape[0])), world)[rank]
            optimizer.roll({"batch": tuple(t[shard] for t in train)})
    return {"model": model.state_dict(), "multipliers": problem.multiplier_values["descent"]}


def main(out):
    torch.distributed.init_process_group("gloo")
    rank = torch.distributed.get_rank()
    try:
        for name in CASES:
            ckpt = os.path.join(out, f"ckpt-{name}") if name == RESUMED else None
            torch.save(run_case(name, ckpt), os.path.join(out, f"{name}.rank{rank}.pt"))
        # continue the checkpointed case for two more epochs (resume under DDP)
        torch.save(run_case(RESUMED, os.path.join(out, f"ckpt-{RESUMED}"), epochs=5, resume=True),
                   os.path.join(out, f"{RESUMED}-resumed.rank{rank}.pt"))
        # Multiplier.all_reduce averages replicas that stepped on different values
        from sdu_ext.train import Multiplier
        nu = Multiplier(init=[rank + 1.0, 0.25], lr=0.5, resilient=True)
        nu.step(torch.tensor([0.0, 2.0 * rank], dtype=torch.float64))
        torch.save(nu.all_reduce().state_dict(), os.path.join(out, f"multiplier.rank{rank}.pt"))
        try:
            import cooper  # noqa: F401
        except ImportError:
            pass
        else:
            torch.save(run_cooper(distributed=True), os.path.join(out, f"cooper.rank{rank}.pt"))
    finally:
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    torch.set_num_threads(1)
    main(sys.argv[1])
