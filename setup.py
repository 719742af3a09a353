"""Builds the compiled library ``sparsekit._C`` (everything else is in pyproject.toml).

Sources: ``csrc/ops.cpp`` and ``csrc/cpu/*.cpp`` always; ``csrc/cuda/*.cu`` when the installed torch
has CUDA and nvcc is found. Environment overrides:

- ``SPARSEKIT_SKIP_CUDA=1``: never build the CUDA sources;
- ``FORCE_CUDA=1``: build them even when no GPU is visible (needs a CUDA torch and nvcc);
- ``SPARSEKIT_SKIP_EXT=1``: build no extension at all (pure-Python install; ops fall back).

Install with ``pip install --no-build-isolation -e .`` (the extension compiles against the torch
already installed, so build isolation must be off).
"""
from __future__ import annotations

import glob
import os
import shutil

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _nvcc_found() -> bool:
    from torch.utils.cpp_extension import CUDA_HOME

    if CUDA_HOME and os.path.exists(os.path.join(CUDA_HOME, "bin", "nvcc")):
        return True
    return shutil.which("nvcc") is not None


def _extensions():
    if _flag("SPARSEKIT_SKIP_EXT"):
        return [], {}
    import torch
    from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

    rel = lambda pattern: sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))  # noqa: E731
    sources = ["csrc/ops.cpp"] + rel("csrc/cpu/*.cpp")
    cuda_sources = rel("csrc/cuda/*.cu")
    with_cuda = bool(cuda_sources) and torch.version.cuda is not None and not _flag("SPARSEKIT_SKIP_CUDA")
    if with_cuda and not _flag("FORCE_CUDA"):
        with_cuda = _nvcc_found()

    cxx = ["-O3", "-std=c++17", "-fopenmp", "-fno-math-errno", "-Wno-unknown-pragmas"]
    define_macros = []
    # A toolchain that links libstdc++ statically (some images wrap g++ that way) would otherwise
    # export that copy's symbols, which then mix with the process's own libstdc++: a formatted
    # TORCH_CHECK message came out cut short, or the process crashed. Keep any static copy private.
    link = ["-fopenmp", "-Wl,--exclude-libs,ALL"]
    if with_cuda:
        nvcc = ["-O3", "-lineinfo", "-std=c++17", "--expt-relaxed-constexpr"]
        if not os.environ.get("TORCH_CUDA_ARCH_LIST"):  # set it (e.g. "9.0") for quicker builds
            nvcc += ["-gencode", "arch=compute_80,code=sm_80", "-gencode", "arch=compute_90,code=sm_90"]
            if _flag("SPARSEKIT_SM90A"):  # kernels using wgmma need the arch-specific target
                nvcc += ["-gencode", "arch=compute_90a,code=sm_90a"]
        ext = CUDAExtension(
            "sparsekit._C",
            sources + cuda_sources,
            extra_compile_args={"cxx": cxx + ["-DSPARSEKIT_WITH_CUDA"], "nvcc": nvcc + ["-DSPARSEKIT_WITH_CUDA"]},
            extra_link_args=link,
            define_macros=define_macros,
        )
    else:
        ext = CppExtension(
            "sparsekit._C",
            sources,
            extra_compile_args={"cxx": cxx},
            extra_link_args=link,
            define_macros=define_macros,
        )
    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = _extensions()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
