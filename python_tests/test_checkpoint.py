"""Checkpoints and files that lose nothing (issue 12): only finite state is saved, atomic
writes are safe with concurrent writers, checkpoints carry a SHA-256 digest, autocast and
torch.compile'd models train and checkpoint, and misuses fail up front naming the argument."""
import os
import subprocess
import sys
import textwrap
import time

import pytest
import torch

import ddp_worker as W
from sdu_ext.atomic import atomic_write_bytes
from sdu_ext.models import LISTA
from sdu_ext.train import (DescentConstraints, NonFiniteError, PrimalDualTrainer, TrainConfig, constraint_values,
                           load_checkpoint, save_checkpoint, squared_error)

pytestmark = pytest.mark.usefixtures("one_thread")

L = W.L


def data(dtype=torch.float32):
    return W.make_problem(seed=4, n_train=256, n_val=64, dtype=dtype)


def lista(D):
    torch.manual_seed(0)
    return LISTA(D, W.ALPHA, L, init="ista")


def params(model):
    return {k: v.detach().clone() for k, v in model.named_parameters()}


# ---------------------------------------------------------------- 1. only finite state is saved

class _NanGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        return g * float("nan")


@pytest.mark.parametrize("with_val", [False, True], ids=["no-validation", "validation"])
def test_nan_weights_of_an_epochs_last_step_never_replace_a_good_checkpoint(tmp_path, with_val):
    """The last step of epoch 2 gets a NaN gradient (its loss is finite): the weights turn NaN
    after the step, and last.pt / best.pt keep epoch 1, from which the run resumes."""
    D, train, val = data()
    calls = []

    def loss(out, batch):
        per_sample = squared_error(out, batch)
        if torch.is_grad_enabled():
            calls.append(1)
            if len(calls) == 8:  # 4 batches per epoch: the last step of epoch 2
                return _NanGradient.apply(per_sample)
        return per_sample

    cfg = dict(epochs=3, batch_size=64, lr=1e-3, seed=0, checkpoint_dir=str(tmp_path))
    trainer = PrimalDualTrainer(lista(D), train, val if with_val else None, TrainConfig(**cfg),
                                DescentConstraints(), loss=loss)
    with pytest.raises(NonFiniteError, match=r"non-finite weight '.*' at epoch 2 \(after its last step; no "
                                             r"checkpoint was written"):
        trainer.fit()
    for name in ("last.pt", "best.pt"):
        state = load_checkpoint(tmp_path / name)
        assert state["epoch"] == 1, name
        assert all(torch.isfinite(v).all() for v in state["model"].values() if isinstance(v, torch.Tensor)), name
    resumed = PrimalDualTrainer(lista(D), train, val if with_val else None, TrainConfig(**cfg), DescentConstraints())
    resumed.fit(resume=True)
    assert resumed.epoch == 3 and all(torch.isfinite(p).all() for p in resumed.model.parameters())


# ---------------------------------------------------------------- 2. concurrent atomic writes

WRITER = textwrap.dedent("""
    import sys
    from sdu_ext.atomic import atomic_write_bytes
    path, tag, n = sys.argv[1], sys.argv[2].encode(), int(sys.argv[3])
    for i in range(n):
        atomic_write_bytes(tag * 20000 + str(i).encode(), path)
""")


def test_two_concurrent_writers_lose_no_write(tmp_path):
    path = tmp_path / "shared.bin"
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(path), tag, "60"], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT) for tag in ("a", "b")]
    outs = [p.communicate(timeout=240)[0].decode(errors="replace") for p in procs]
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-3000:]
    content = path.read_bytes()
    assert content[:20000] in (b"a" * 20000, b"b" * 20000) and content[20000:].isdigit()
    assert sorted(os.listdir(tmp_path)) == ["shared.bin"]


def test_leftovers_of_dead_writers_are_removed_live_ones_kept(tmp_path):
    from sdu_ext import atomic

    path = tmp_path / "f.bin"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True).stdout.strip()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        names = {"dead-old-name": f".f.bin.tmp.{dead}",
                 "dead": f".f.bin.tmp.{atomic._HOST}.{dead}.0a1b",
                 "live": f".f.bin.tmp.{atomic._HOST}.{live.pid}.0a1b",
                 "other-host-fresh": ".f.bin.tmp.otherhost.1.0a1b",
                 "other-host-old": ".f.bin.tmp.otherhost.2.0a1b"}
        for name in names.values():
            (tmp_path / name).write_bytes(b"partial")
        old = time.time() - atomic.STALE_SECONDS - 10
        os.utime(tmp_path / names["other-host-old"], (old, old))
        atomic_write_bytes(b"new", path)
        left = set(os.listdir(tmp_path))
        assert left == {"f.bin", names["live"], names["other-host-fresh"]}, left
        assert path.read_bytes() == b"new"
    finally:
        live.kill()
        live.wait()


# ---------------------------------------------------------------- 3. integrity digest

@pytest.fixture(scope="module")
def checkpoint_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpt")
    D, train, val = data()
    PrimalDualTrainer(lista(D), train, val, TrainConfig(epochs=1, batch_size=128, lr=1e-3, checkpoint_dir=str(d)),
                      DescentConstraints()).fit()
    return d


def damaged_copies(src, tmp_path):
    raw = src.read_bytes()
    flipped = bytearray(raw)
    flipped[len(raw) // 2] ^= 0x10
    copies = {"flipped": bytes(flipped), "truncated": raw[:len(raw) - 100], "text": b"hello, not a checkpoint\n"}
    buf = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), buf)
    copies["foreign-torch-file"] = buf.read_bytes()
    torch.save({"model": torch.nn.Linear(2, 2)}, buf)  # a pickled module: refused by weights_only
    copies["pickled-object"] = buf.read_bytes()
    out = {}
    for name, content in copies.items():
        out[name] = tmp_path / name / "last.pt"
        out[name].parent.mkdir()
        out[name].write_bytes(content)
    return out


def test_damaged_or_foreign_checkpoints_give_one_clear_error(checkpoint_dir, tmp_path):
    assert load_checkpoint(checkpoint_dir / "last.pt")["epoch"] == 1
    expected = {"flipped": "is damaged: its SHA-256 digest does not match its contents",
                "truncated": "is damaged: its SHA-256 digest does not match its contents",
                "text": "is not a readable checkpoint",
                "foreign-torch-file": "is not an sdu_ext training checkpoint",
                "pickled-object": "is not a readable checkpoint (UnpicklingError: "}
    for name, path in damaged_copies(checkpoint_dir / "last.pt", tmp_path).items():
        with pytest.raises(ValueError) as e:
            load_checkpoint(path)
        message = str(e.value)
        assert message.startswith(f"checkpoint: {str(path)!r} ") and expected[name] in message, (name, message)
        assert "\n" not in message, name


def test_resume_from_a_damaged_last_pt_says_what_to_do(checkpoint_dir, tmp_path):
    D, train, val = data()
    path = damaged_copies(checkpoint_dir / "last.pt", tmp_path)["flipped"]
    trainer = PrimalDualTrainer(lista(D), train, val, TrainConfig(epochs=2, batch_size=128, lr=1e-3,
                                                                  checkpoint_dir=str(path.parent)),
                                DescentConstraints())
    with pytest.raises(ValueError, match=r"^resume: checkpoint: .*last\.pt' is damaged: .*; resuming needs a "
                                         r"valid last\.pt: delete it to start over \(sdu-ext: --overwrite\)$"):
        trainer.fit(resume=True)


def test_save_checkpoint_round_trips(tmp_path):
    state = {"format": "sdu_ext.train/1", "x": torch.arange(5.0), "nested": {"a": [1, 2.5, None]}}
    save_checkpoint(state, tmp_path / "c.pt")
    back = load_checkpoint(tmp_path / "c.pt")
    assert torch.equal(back["x"], state["x"]) and back["nested"] == state["nested"]


# ---------------------------------------------------------------- 4. autocast and compiled models

def test_autocast_bfloat16_trains_with_float32_loss_and_float64_multipliers():
    D, train, val = data()
    seen = []

    def forward(model, batch, noise):
        it = model(batch[0], return_all=True)
        seen.append(it.dtype)
        return it

    cfg = TrainConfig(epochs=2, batch_size=64, lr=3e-3, lr_dual=1.0, eps=0.2, autocast="bfloat16")
    trainer = PrimalDualTrainer(lista(D), train, val, cfg, DescentConstraints("distance", "ratio_of_means"),
                                forward=forward)
    history = trainer.fit()
    assert torch.bfloat16 in seen  # the forward ran under autocast
    nu = trainer.multipliers["descent"]
    assert nu.dtype == torch.float64 and nu.max() > 0 and torch.isfinite(nu).all()
    assert all(torch.isfinite(torch.tensor(row["train_loss"])) for row in history)
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())
    assert history[-1]["val_loss"] < history[0]["val_loss"] * 1.5


def test_compiled_model_checkpoints_under_plain_keys_and_resumes(tmp_path):
    D, train, val = data()
    cfg = dict(batch_size=128, lr=1e-3, seed=0, checkpoint_dir=str(tmp_path))
    compiled = torch.compile(lista(D), backend="eager")
    PrimalDualTrainer(compiled, train, val, TrainConfig(epochs=1, **cfg), DescentConstraints()).fit()
    for name in ("last.pt", "best.pt"):
        keys = list(load_checkpoint(tmp_path / name)["model"])
        assert keys and not [k for k in keys if k.startswith("_orig_mod.")], keys
    plain = lista(D)
    plain.load_state_dict(load_checkpoint(tmp_path / "best.pt")["model"])
    again = torch.compile(lista(D), backend="eager")
    trainer = PrimalDualTrainer(again, train, val, TrainConfig(epochs=2, **cfg), DescentConstraints())
    trainer.fit(resume=True)
    assert trainer.epoch == 2


# ---------------------------------------------------------------- 5. misuses fail up front

def trainer_with(tmp_path=None, targets=None, **kw):
    D, train, val = data()
    if targets is not None:
        train = (train[0], targets(train[1]))
    return PrimalDualTrainer(lista(D), train, val, TrainConfig(epochs=1, batch_size=64, **kw), DescentConstraints())


def a_file(tmp_path):
    path = tmp_path / "a_file"
    path.write_text("x")
    return str(path)


MISUSES = [
    ("optimizer_kwargs", lambda tmp: TrainConfig(optimizer_kwargs={"momentun": 0.9}),
     r"^optimizer_kwargs: expected arguments of torch\.optim\.Adam \(betas, .*\), got 'momentun'"),
    ("optimizer_kwargs", lambda tmp: TrainConfig(optimizer="SGD", optimizer_kwargs={"momentum": -1.0}),
     r"^optimizer_kwargs: torch\.optim\.SGD rejects \{'momentum': -1\.0\}"),
    ("y* width", lambda tmp: trainer_with(targets=lambda y: y[:, :-1]).fit(),
     r"^y\*: expected the targets batch\[1\] of shape \(64, 40\) \(a layer's output\), got shape \(64, 39\)"),
    ("y* dtype", lambda tmp: trainer_with(targets=lambda y: y.double()).fit(),
     r"^y\*: expected the targets batch\[1\] in torch\.float32 \(the dtype of the iterates\), got torch\.float64"),
    ("checkpoint_dir", lambda tmp: trainer_with(checkpoint_dir=a_file(tmp)),
     r"^checkpoint_dir: expected a directory, got '.*a_file', a file"),
    ("log_dir", lambda tmp: trainer_with(log_dir=os.path.join(a_file(tmp), "logs")),
     r"^log_dir: expected a directory, got '.*a_file/logs', inside '.*a_file', which is a file"),
    ("eps", lambda tmp: DescentConstraints(eps=None), r"^eps: expected a number in \[0, 1\), got None"),
    ("eps", lambda tmp: TrainConfig(eps_schedule=((0, None),)), r"^eps_schedule: expected milestones"),
    ("eps", lambda tmp: constraint_values("ratio_of_means", None, 4, None, torch.ones(5)),
     r"^eps: expected a number in \[0, 1\), got None"),
    ("autocast", lambda tmp: TrainConfig(autocast="int8"),
     r"^autocast: expected one of None, 'bfloat16', 'float16', got 'int8'"),
]


@pytest.mark.parametrize("case", range(len(MISUSES)), ids=[f"{i}-{m[0]}" for i, m in enumerate(MISUSES)])
def test_misuse_gets_a_clear_error_before_any_work(tmp_path, case):
    _, make, match = MISUSES[case]
    with pytest.raises(ValueError, match=match):
        make(tmp_path)


def test_wrong_targets_fail_before_a_weight_changes():
    trainer = trainer_with(targets=lambda y: y[:, :1])  # would broadcast silently in the squared error
    before = params(trainer.model)
    with pytest.raises(ValueError, match=r"^y\*: expected the targets"):
        trainer.fit()
    after = params(trainer.model)
    assert all(torch.equal(before[k], after[k]) for k in before)
