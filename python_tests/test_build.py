"""sdu_ext.build_info() and the registered op set."""
import importlib.metadata

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
