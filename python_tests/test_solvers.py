"""Batched LASSO solvers (sdu_ext.solvers): agreement with scikit-learn, the
certificate of solve_lasso, the stopping rule of ISTA/FISTA, devices and errors."""
import warnings

import pytest
import torch

from sdu_ext import ops, solvers
from sdu_ext.problems import Lasso
from sdu_testing import DEVICES

sklearn_linear = pytest.importorskip("sklearn.linear_model")


def gaussian_problem(rng, n=40, m=60, B=12, alpha=0.15, device="cpu"):
    D = rng.randn(n, m)
    D = D / D.norm(dim=0)
    y = rng.randn(B, m) * (rng.rand(B, m) < 0.15)
    x = y @ D.T + 0.05 * rng.randn(B, n)
    return Lasso(D.to(device), alpha), x.to(device)


def coherent_problem(rng, n=36, m=44, B=10, alpha=0.5, device="cpu"):
    """Positive dictionary (the `patches` setting in miniature): one dominant Gram eigenvalue."""
    D = rng.rand(n, m)
    x = rng.rand(B, n)
    return Lasso(D.to(device), alpha), x.to(device)


def sklearn_lasso(problem, x):
    """Per-signal sklearn Lasso at tight tolerance. sklearn minimises
    1/(2 n) ||x - D y||^2 + a ||y||_1, i.e. ours divided by n with a = alpha / n."""
    D = problem.D.double().cpu().numpy()
    n = D.shape[0]
    out = []
    for xb in x.double().cpu().numpy():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            est = sklearn_linear.Lasso(alpha=problem.alpha / n, fit_intercept=False, tol=1e-14,
                                       max_iter=200000).fit(D, xb)
        out.append(torch.from_numpy(est.coef_.copy()))
    return torch.stack(out)


def rel_obj_diff(problem, y, y_ref, x):
    f = problem.value(y.double(), x.double())
    f_ref = problem.value(y_ref.double().to(f.device), x.double())
    return ((f - f_ref) / f_ref).abs().max().item()


def subgradient_norm(problem, y, x):
    P = Lasso(problem.D.double(), problem.alpha)
    return P.subgradient(y.double(), x.double()).norm(dim=1).max().item()


@pytest.mark.parametrize("make", [gaussian_problem, coherent_problem], ids=["gaussian", "coherent"])
def test_fista_matches_sklearn(rng, make):
    problem, x = make(rng)
    y_ref = sklearn_lasso(problem, x)
    res = solvers.fista(problem, x, max_iter=20000, tol=1e-12, restart=True, dtype=torch.float64)
    assert rel_obj_diff(problem, res.codes, y_ref, x) <= 1e-6, rng
    assert subgradient_norm(problem, res.codes, x) <= 1e-5, rng
    assert bool(res.converged.all())


def test_ista_and_plain_fista_match_sklearn(rng):
    problem, x = gaussian_problem(rng)
    y_ref = sklearn_lasso(problem, x)
    for res in (solvers.ista(problem, x, max_iter=50000, tol=1e-12),
                solvers.fista(problem, x, max_iter=50000, tol=1e-12)):
        assert rel_obj_diff(problem, res.codes, y_ref, x) <= 1e-6, rng
        assert subgradient_norm(problem, res.codes, x) <= 1e-5, rng


def test_sparse_encode_alpha_is_ours(rng):
    """sparse_encode(X, D.T, algorithm="lasso_cd", alpha=a) builds Lasso(alpha=a / n_features)
    whose objective is ours / n_features: the same minimiser, no conversion of alpha."""
    decomposition = pytest.importorskip("sklearn.decomposition")
    problem, x = gaussian_problem(rng)
    codes = decomposition.sparse_encode(x.numpy(), problem.D.T.numpy(), algorithm="lasso_cd",
                                        alpha=problem.alpha, max_iter=100000)
    ours = solvers.solve_lasso(problem, x, tol=1e-10)
    assert rel_obj_diff(problem, torch.from_numpy(codes), ours.codes, x) <= 1e-6, rng


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("make", [gaussian_problem, coherent_problem], ids=["gaussian", "coherent"])
@pytest.mark.parametrize("tol", [1e-6, 1e-9])
def test_solve_lasso_certified(rng, device, make, tol):
    problem, x = make(rng, device=device)
    res = solvers.solve_lasso(problem, x, tol=tol)
    assert res.codes.dtype == torch.float64 and res.codes.device == x.device
    assert bool(res.converged.all()), rng
    assert bool((res.gap <= tol * res.objective).all()), rng
    # an independent computation of the certificate (through D, not the Gram matrix)
    gap = problem.duality_gap(res.codes, x)
    assert bool((gap <= tol * res.objective * (1 + 1e-6) + 1e-12).all()), rng
    assert torch.allclose(gap, res.gap, rtol=1e-6, atol=1e-10), rng
    if device == "cpu":
        assert rel_obj_diff(problem, res.codes, sklearn_lasso(problem, x), x) <= 2 * tol, rng


@pytest.mark.parametrize("matmul_dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_solve_lasso_matmul_dtypes(rng, matmul_dtype):
    problem, x = gaussian_problem(rng)
    res = solvers.solve_lasso(problem, x, tol=1e-8, matmul_dtype=matmul_dtype)
    assert bool(res.converged.all()) and bool((res.relative_gap <= 1e-8).all()), rng


def test_solve_lasso_float32_input_and_output(rng):
    problem, x = gaussian_problem(rng)
    p32 = Lasso(problem.D.float(), problem.alpha)
    res = solvers.solve_lasso(p32, x.float(), tol=1e-6, dtype=torch.float32)
    assert res.codes.dtype == torch.float32
    # the reported gap is the one of the returned (rounded) codes
    assert torch.allclose(res.gap, p32.duality_gap(res.codes, x.float()), rtol=1e-5, atol=1e-9)


def test_solve_lasso_edge_cases(rng):
    problem, x = gaussian_problem(rng)
    # alpha above ||D^T x||_inf: y* = 0, certified before any step
    big = Lasso(problem.D, float((x @ problem.D).abs().max()) * 1.01)
    res = solvers.solve_lasso(big, x)
    assert bool((res.codes == 0).all()) and res.n_iter == 0 and bool(res.converged.all())
    empty = solvers.solve_lasso(problem, x[:0])
    assert empty.codes.shape == (0, problem.m) and empty.n_iter == 0
    # warm start from the solution: certified at once or within one round
    sol = solvers.solve_lasso(problem, x, tol=1e-9)
    warm = solvers.solve_lasso(problem, x, tol=1e-6, y0=sol.codes)
    assert warm.n_iter <= 1 and bool(warm.converged.all())
    # a budget too small to certify is reported, with the true gap
    short = solvers.solve_lasso(problem, x, tol=1e-12, max_iter=2)
    assert not bool(short.converged.all())
    assert torch.allclose(short.gap, problem.duality_gap(short.codes, x), rtol=1e-6, atol=1e-12)


def test_ista_steps_are_exact(rng):
    """ista(max_iter=k, tol=0) is k steps of soft(y - D^T (D y - x) / L, alpha / L) from 0."""
    problem, x = gaussian_problem(rng)
    L = problem.lipschitz
    y = torch.zeros(x.shape[0], problem.m, dtype=torch.float64)
    for _ in range(25):
        y = ops.soft_threshold(y - problem.smooth_grad(y, x) / L, problem.alpha / L)
    res = solvers.ista(problem, x, max_iter=25, tol=0.0)
    torch.testing.assert_close(res.codes, y, rtol=1e-12, atol=1e-12)
    assert bool((res.iterations == 25).all()) and not bool(res.converged.any())


def test_callback_sees_every_iteration_and_can_stop(rng):
    problem, x = gaussian_problem(rng)
    seen = []

    def callback(k, rows, codes):
        seen.append((k, rows.tolist(), codes.clone()))
        return k == 7

    res = solvers.fista(problem, x, max_iter=50, tol=0.0, callback=callback)
    assert [k for k, _, _ in seen] == list(range(1, 8))
    assert all(rows == list(range(x.shape[0])) for _, rows, _ in seen)
    torch.testing.assert_close(seen[-1][2], res.codes, rtol=0, atol=0)
    torch.testing.assert_close(seen[2][2], solvers.fista(problem, x, max_iter=3, tol=0.0).codes, rtol=0, atol=0)
    with pytest.raises(ValueError, match="^callback:"):
        solvers.ista(problem, x, callback=3)


def test_stopping_rule(rng):
    problem, x = gaussian_problem(rng)
    tol = 1e-4
    res = solvers.fista(problem, x, max_iter=5000, tol=tol)
    assert bool(res.converged.all())
    # replay signal 0 with a budget and no tolerance: at its stopping iteration k the
    # relative change is <= tol, one iteration earlier it was not
    k = int(res.iterations[0])
    codes = {j: solvers.fista(problem, x, max_iter=j, tol=0.0).codes[0] for j in (k - 2, k - 1, k) if j >= 0}
    torch.testing.assert_close(codes[k], res.codes[0], rtol=1e-12, atol=1e-14)
    assert float((codes[k] - codes[k - 1]).norm()) <= tol * float(codes[k].norm())
    if k >= 2:
        assert float((codes[k - 1] - codes[k - 2]).norm()) > tol * float(codes[k - 1].norm())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("fn", [solvers.ista, solvers.fista])
def test_classic_devices_dtypes(rng, device, fn):
    problem, x = gaussian_problem(rng, device=device)
    for dtype in (torch.float32, torch.float64):
        res = fn(problem, x, max_iter=300, tol=1e-5, dtype=dtype, progress=False)
        assert res.codes.dtype == dtype and res.codes.device == x.device
        assert res.gap.dtype == torch.float64 and res.gap.shape == (x.shape[0],)
        assert res.iterations.dtype == torch.int64


def test_progress_bar_flag(rng, capsys):
    problem, x = gaussian_problem(rng, B=3)
    solvers.fista(problem, x, max_iter=20, tol=0.0, progress=True)
    assert "fista" in capsys.readouterr().err
    solvers.fista(problem, x, max_iter=20, tol=0.0, progress=False)
    solvers.solve_lasso(problem, x, progress=False)
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("kwargs, name", [
    (dict(tol=-1.0), "tol"),
    (dict(max_iter=-1), "max_iter"),
    (dict(dtype=torch.float16), "dtype"),
    (dict(y0=torch.zeros(2, 3)), "y0"),
])
@pytest.mark.parametrize("fn", [solvers.ista, solvers.fista, solvers.solve_lasso])
def test_bad_arguments(rng, fn, kwargs, name):
    problem, x = gaussian_problem(rng)
    with pytest.raises(ValueError, match=f"^{name}:"):
        fn(problem, x, **kwargs)


def test_bad_inputs(rng):
    problem, x = gaussian_problem(rng)
    with pytest.raises(ValueError, match="^x:"):
        solvers.solve_lasso(problem, x[:, :-1])
    with pytest.raises(ValueError, match="^problem:"):
        solvers.fista(problem.D, x)
    with pytest.raises(ValueError, match="^tol:"):
        solvers.solve_lasso(problem, x, tol=0.0)
    with pytest.raises(ValueError, match="^step:"):
        solvers.ista(problem, x, step=-1.0)
