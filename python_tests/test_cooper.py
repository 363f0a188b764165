"""sdu_ext.integrations.cooper: cooper on the same batches gives the trainer's multipliers
and weights (float64), and without cooper the import names the pip package."""
import subprocess
import sys

import pytest
import torch

import ddp_worker as W
from sdu_ext.models import LISTA
from sdu_ext.train import DescentConstraints, PrimalDualTrainer, TrainConfig

pytestmark = pytest.mark.usefixtures("one_thread")


def test_import_without_cooper_names_the_pip_package():
    code = ("import sys; sys.modules['cooper'] = None\n"
            "try:\n    import sdu_ext.integrations.cooper\nexcept ImportError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "pip install cooper-optim" in out, out


@pytest.mark.parametrize("form,layers,init", [("mean_ratio", None, None),
                                              ("ratio_of_means", [2, 3, 4], [0.5, 0.0, 1.0]),
                                              ("difference", [1, 4], [0.0, 0.2])])
def test_cooper_matches_the_trainer(rng, form, layers, init):
    pytest.importorskip("cooper", reason="cooper-optim is not installed (pip install cooper-optim)")
    from sdu_ext.integrations.cooper import DescentProblem, simultaneous_optimizer

    D, train, _ = W.make_problem(seed=int(rng.randint(0, 1000, (1,))), n_train=96, n_val=8, dtype=torch.float64)
    lr, lr_dual, eps, B, epochs = 5e-3, 2.0, 0.3, 24, 2

    def model():
        torch.manual_seed(0)
        return LISTA(D, W.ALPHA, W.L, init="ista")

    group = DescentConstraints("distance", form, eps=eps, layers=layers)
    ours = model()
    trainer = PrimalDualTrainer(ours, train, None, TrainConfig(epochs=epochs, batch_size=B, lr=lr, lr_dual=lr_dual,
                                                               shuffle=False, seed=0),
                                group, multipliers=None if init is None else {"descent": init})
    trainer.fit()

    theirs = model()
    problem = DescentProblem(theirs, group, multipliers=None if init is None else {"descent": init})
    optimizer = simultaneous_optimizer(problem, torch.optim.Adam(theirs.parameters(), lr=lr), lr_dual)
    for _ in range(epochs):
        for start in range(0, train[0].shape[0], B):
            optimizer.roll({"batch": tuple(t[start:start + B] for t in train)})

    got = problem.multiplier_values["descent"]
    expected = trainer.multipliers["descent"]
    assert expected.max() > 0.01, expected  # the dual steps did something
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6, msg=lambda m: f"{rng}: {m}")
    for (k, a), b in zip(ours.named_parameters(), theirs.parameters()):
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-6, msg=lambda m: f"{rng} {k}: {m}")
