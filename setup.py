"""Build of the compiled module sdu_ext._C (CPU kernels always, CUDA kernels when possible).

Variables:
  FORCE_CUDA=1      build the CUDA kernels (fails clearly if torch has no CUDA)
  FORCE_CUDA=0      CPU kernels only, even where CUDA is available
  CUDA_HOME         the CUDA toolkit; when unset, taken from the real nvcc found on PATH
  TORCH_CUDA_ARCH_LIST  GPU architectures; defaults to a list including 9.0 when no GPU is visible
  SDU_DEBUG=1       -O0 -g build
"""
import glob
import os
import shutil
import sys

from setuptools import setup

import torch

ROOT = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
from cuda_env import pip_cuda_include_dirs, real_cuda_home  # noqa: E402
DEFAULT_ARCH_LIST = "8.0;8.6;8.9;9.0+PTX"


def want_cuda():
    force = os.environ.get("FORCE_CUDA")
    if force not in (None, "", "0", "1"):
        sys.exit(f"FORCE_CUDA: expected 0 or 1, got {force!r}")
    if force == "0":
        return False
    if torch.version.cuda is None:
        if force == "1":
            sys.exit(
                f"FORCE_CUDA=1 but the installed torch {torch.__version__} is a CPU-only build; "
                "install a CUDA build of torch (e.g. pip install torch==2.14.1) or unset FORCE_CUDA"
            )
        return False
    if force == "1":
        return True
    return os.environ.get("CUDA_HOME") is not None or shutil.which("nvcc") is not None


def extension():
    with_cuda = want_cuda()
    if with_cuda and not os.environ.get("CUDA_HOME"):
        home = real_cuda_home()
        if home is None:
            sys.exit("FORCE_CUDA=1 but no nvcc was found on PATH and CUDA_HOME is unset")
        os.environ["CUDA_HOME"] = home
    # Imported only now: torch.utils.cpp_extension reads CUDA_HOME at import time.
    from torch.utils import cpp_extension
    if with_cuda and not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
        os.environ["TORCH_CUDA_ARCH_LIST"] = DEFAULT_ARCH_LIST

    debug = os.environ.get("SDU_DEBUG") == "1"
    opt = ["-O0", "-g"] if debug else ["-O3"]
    cxx = opt + ["-fopenmp"]
    macros = [("SDU_TORCH_VERSION", f'"{torch.__version__}"')]
    sources = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/cpu/*.cpp"))
    kwargs = dict(
        name="sdu_ext._C",
        sources=sources,
        extra_compile_args={"cxx": cxx},
        extra_link_args=["-fopenmp"],
        define_macros=macros,
        py_limited_api=False,
    )
    if with_cuda:
        sources += sorted(glob.glob("csrc/cuda/*.cu"))
        kwargs["define_macros"] = macros + [("WITH_CUDA", None)]
        kwargs["extra_compile_args"]["nvcc"] = opt + ["--expt-relaxed-constexpr"]
        kwargs["include_dirs"] = pip_cuda_include_dirs()
        return cpp_extension.CUDAExtension(**kwargs)
    return cpp_extension.CppExtension(**kwargs)


def build_ext_class():
    from torch.utils.cpp_extension import BuildExtension

    return BuildExtension.with_options(use_ninja=shutil.which("ninja") is not None)


setup(
    ext_modules=[extension()],
    cmdclass={"build_ext": build_ext_class()},
)
