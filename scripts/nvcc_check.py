"""Compile every csrc/cuda/*.cu on its own with nvcc against the running torch.

Run with a CUDA build of torch (no GPU needed). Exits non-zero, with nvcc's
messages, if any file fails: a broken .cu file must fail CI.
Usage: python scripts/nvcc_check.py [--arch 9.0] [files...]
"""
import argparse
import glob
import os
import subprocess
import sys
import sysconfig
import tempfile
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cuda_env import pip_cuda_include_dirs, real_cuda_home  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="9.0")
    parser.add_argument("files", nargs="*")
    args = parser.parse_args()

    home = os.environ.get("CUDA_HOME") or real_cuda_home()
    if not home:
        sys.exit("nvcc_check: no nvcc on PATH and CUDA_HOME unset")
    os.environ["CUDA_HOME"] = home  # before torch.utils.cpp_extension reads it

    import torch
    from torch.utils.cpp_extension import include_paths

    if torch.version.cuda is None:
        sys.exit(f"nvcc_check: torch {torch.__version__} is a CPU-only build; run with a CUDA build")
    nvcc = os.path.join(home, "bin", "nvcc")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    files = args.files or sorted(glob.glob(os.path.join(root, "csrc", "cuda", "*.cu")))
    sm = args.arch.replace(".", "")
    includes = include_paths() + [sysconfig.get_paths()["include"]] + pip_cuda_include_dirs()
    flags = ["-std=c++20", "--expt-relaxed-constexpr", "-DWITH_CUDA", "-O1",
             f"-gencode=arch=compute_{sm},code=sm_{sm}",
             f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}"]
    flags += [f"-I{p}" for p in includes]

    def check(path):
        with tempfile.TemporaryDirectory() as tmp:
            out = subprocess.run([nvcc, *flags, "-c", path, "-o", os.path.join(tmp, "o.o")],
                                 capture_output=True, text=True)
        return path, out.returncode, out.stdout + out.stderr

    failed = 0
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        for path, rc, log in pool.map(check, files):
            print(f"{'ok  ' if rc == 0 else 'FAIL'} {os.path.relpath(path, root)}")
            if rc != 0:
                failed += 1
                print(log)
    print(f"nvcc {home}: {len(files) - failed}/{len(files)} CUDA sources compile for sm_{sm}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
