"""sdu_ext: robust stochastically-descending unrolled networks on fused PyTorch ops."""
import torch

from . import _C  # noqa: F401  (loads the compiled kernels and the `sdu` op schemas)
from . import ops, reference  # noqa: F401
from . import nn  # noqa: F401

__version__ = "0.1.0"


def build_info():
    """How the compiled module was built.

    Returns a dict: ``cuda`` (bool, CUDA kernels compiled in), ``openmp`` (bool,
    CPU kernels built with OpenMP so ``at::parallel_for`` runs in parallel),
    ``torch`` (version built against), ``torch_runtime`` (version running now),
    ``version`` (this package), ``cuda_available`` (a GPU is visible now).
    """
    return {
        "version": __version__,
        "cuda": bool(_C.WITH_CUDA),
        "openmp": bool(_C.WITH_OPENMP),
        "torch": _C.TORCH_VERSION,
        "torch_runtime": torch.__version__,
        "cuda_available": torch.cuda.is_available(),
        "threads": torch.get_num_threads(),
    }
