"""Where the CUDA toolkit and the CUDA library headers are (used by setup.py and CI)."""
import os
import re
import shutil
import subprocess
import sys
import tempfile


def real_cuda_home():
    """The toolkit folder of the nvcc on PATH, asked from nvcc itself.

    The nvcc on PATH may be a wrapper script in another folder; its dry run prints
    the real install's TOP, which is what torch's CUDA_HOME must point at.
    """
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "probe.cu")
        open(src, "w").close()
        try:
            out = subprocess.run([nvcc, "--dryrun", "-c", src, "-o", os.path.join(tmp, "probe.o")],
                                 capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.SubprocessError):
            out = None
    if out is not None:
        match = re.search(r"^#\$ TOP=(.+)$", out.stdout + out.stderr, re.MULTILINE)
        if match:
            return os.path.realpath(match.group(1).strip())
    return os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))


def pip_cuda_include_dirs():
    """Headers of the CUDA libraries that torch's wheels install under site-packages/nvidia.

    A bare toolkit (nvcc and the runtime only) lacks cuBLAS/cuSPARSE headers that
    torch's CUDA headers include; the pip packages carry the matching ones.
    """
    try:
        import nvidia
    except ImportError:
        return []
    dirs = []
    for root in nvidia.__path__:
        for name in sorted(os.listdir(root)):
            inc = os.path.join(root, name, "include")
            if os.path.isdir(inc):
                dirs.append(inc)
    return dirs


if __name__ == "__main__":
    # `python scripts/cuda_env.py home|includes`: for shell scripts.
    what = sys.argv[1] if len(sys.argv) > 1 else "home"
    if what == "home":
        print(real_cuda_home() or "")
    else:
        print(" ".join(pip_cuda_include_dirs()))
