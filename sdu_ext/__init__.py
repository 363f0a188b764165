"""sdu_ext: robust stochastically-descending unrolled networks on fused PyTorch ops.

``import sdu_ext`` is light: it loads the compiled kernels and the ``torch.ops.sdu`` op
schemas right away only when torch is already imported (as in every program that uses
them: ``import torch`` comes first). Otherwise they load with the first submodule that
needs them (``sdu_ext.ops``, ``sdu_ext.nn``, ``sdu_ext.train``, ...) or the first use of
``sdu_ext.ops`` / ``sdu_ext.nn`` / ``sdu_ext.reference`` / :func:`build_info`. This keeps
``sdu-ext --help`` from waiting seconds for torch.
"""
import importlib
import sys
from typing import Any, Dict

__version__ = "0.1.0"
__all__ = ["__version__", "build_info", "ops", "reference", "nn"]

_LAZY = ("_C", "ops", "reference", "nn")


def build_info() -> Dict[str, Any]:
    """How the compiled module was built.

    Returns a dict: ``cuda`` (bool, CUDA kernels compiled in), ``openmp`` (bool,
    CPU kernels built with OpenMP so ``at::parallel_for`` runs in parallel),
    ``torch`` (version built against), ``torch_runtime`` (version running now),
    ``version`` (this package), ``cuda_available`` (a GPU is visible now),
    ``threads`` (torch's CPU threads now).
    """
    import torch

    from . import _C

    return {
        "version": __version__,
        "cuda": bool(_C.WITH_CUDA),
        "openmp": bool(_C.WITH_OPENMP),
        "torch": _C.TORCH_VERSION,
        "torch_runtime": torch.__version__,
        "cuda_available": torch.cuda.is_available(),
        "threads": torch.get_num_threads(),
    }


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import torch  # noqa: F401  (libtorch must be loaded before the compiled module)

        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if "torch" in sys.modules:
    from . import _C  # noqa: F401,E402  (loads the compiled kernels and the `sdu` op schemas)
    from . import nn, ops, reference  # noqa: F401,E402
