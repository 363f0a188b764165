"""sdu_ext.build_info() and the registered op set."""
import importlib.metadata
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import sdu_ext

SDU_OPS = {
    "soft_threshold", "soft_threshold_", "soft_threshold_backward", "lista_layer",
    "residual_norms", "residual_norms_backward", "descent_violations",
    "descent_violations_backward", "descent_constraints", "min_norm_subgradient",
    "min_norm_subgradient_backward",
}


def test_build_info_keys_and_types():
    info = sdu_ext.build_info()
    for key, typ in (("cuda", bool), ("openmp", bool), ("torch", str), ("version", str)):
        assert key in info, f"build_info() lacks {key!r}: {info}"
        assert isinstance(info[key], typ), f"build_info()[{key!r}] = {info[key]!r} is not {typ.__name__}"


def test_build_info_values():
    info = sdu_ext.build_info()
    assert info["openmp"] is True, "the CPU kernels must be built with OpenMP"
    assert info["torch"] == torch.__version__, (
        f"built against torch {info['torch']} but running {torch.__version__}: rebuild the extension")
    assert info["version"] == sdu_ext.__version__ == importlib.metadata.version("sdu_ext")
    assert info["torch_runtime"] == torch.__version__
    assert info["cuda_available"] is torch.cuda.is_available()
    if torch.version.cuda is None:
        assert info["cuda"] is False, "CUDA kernels cannot be compiled against a CPU-only torch"
    assert isinstance(info["threads"], int) and info["threads"] >= 1


def test_every_op_is_registered():
    schemas = {s.name.split("::")[1]: s for s in torch._C._jit_get_all_schemas() if s.name.startswith("sdu::")}
    assert set(schemas) == SDU_OPS
    for name in SDU_OPS:
        assert hasattr(torch.ops.sdu, name)
    mutable = {name for name, s in schemas.items() if any(a.alias_info and a.alias_info.is_write
                                                          for a in s.arguments)}
    assert mutable == {"soft_threshold_"}, f"only soft_threshold_ may mutate its input, got {mutable}"


def test_cpu_kernels_registered_for_every_op():
    for name in SDU_OPS:
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"sdu::{name}", "CPU"), name


ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import cuda_env  # noqa: E402


def _run_setup(env_update):
    env = {**os.environ, **env_update}
    return subprocess.run([sys.executable, "setup.py", "--name"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(torch.version.cuda is not None, reason="needs a CPU-only torch")
def test_force_cuda_with_cpu_torch_stops_with_clear_message():
    out = _run_setup({"FORCE_CUDA": "1"})
    assert out.returncode != 0
    assert "FORCE_CUDA=1" in out.stderr and "CPU-only" in out.stderr, out.stderr


def test_force_cuda_rejects_other_values():
    out = _run_setup({"FORCE_CUDA": "yes"})
    assert out.returncode != 0
    assert "FORCE_CUDA: expected 0 or 1, got 'yes'" in out.stderr, out.stderr


def test_cuda_home_found_through_nvcc_wrapper(tmp_path, monkeypatch):
    # A wrapper script on PATH that execs the real nvcc elsewhere: CUDA_HOME must be
    # the real toolkit (which holds bin/nvcc), not the wrapper's folder.
    real = shutil.which("nvcc")
    if real is None:
        pytest.skip("no nvcc on PATH")
    wrapper_dir = tmp_path / "bin"
    wrapper_dir.mkdir()
    wrapper = wrapper_dir / "nvcc"
    wrapper.write_text(f'#!/bin/sh\nexec "{real}" "$@"\n')
    wrapper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{wrapper_dir}:{os.environ['PATH']}")
    home = cuda_env.real_cuda_home()
    assert home is not None and (Path(home) / "bin" / "nvcc").exists(), home
    assert not home.startswith(str(tmp_path)), home
