"""Builds the compiled operator library `detector._C` from `ops/`.

CPU kernels are always built. CUDA kernels are built when a GPU is visible or FORCE_CUDA=1
(compiling them on a machine without a GPU catches compile errors; see docs/design.md for the recipe).
"""

import glob
import os

import torch
from setuptools import find_packages, setup
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

ROOT = os.path.dirname(os.path.abspath(__file__))


def _use_cuda() -> bool:
    if os.environ.get("FORCE_CUDA", "0") == "1":
        return True
    return torch.cuda.is_available() and CUDA_HOME is not None


def _extension():
    cpp_sources = sorted(glob.glob("ops/*.cpp") + glob.glob("ops/cpu/*.cpp"))
    define_macros = []
    extra_compile_args = {"cxx": ["-O3", "-g0", "-fopenmp"]}
    extension = CppExtension
    sources = cpp_sources
    if _use_cuda():
        extension = CUDAExtension
        sources = cpp_sources + sorted(glob.glob("ops/cuda/*.cu"))
        define_macros.append(("WITH_CUDA", None))
        extra_compile_args["nvcc"] = ["-O3", "--expt-relaxed-constexpr", "-Xcompiler", "-g0"]
    return extension(
        name="detector._C",
        sources=sources,
        include_dirs=[os.path.join(ROOT, "ops")],
        define_macros=define_macros,
        extra_compile_args=extra_compile_args,
        extra_link_args=["-fopenmp"],
    )


setup(
    name="detector",
    version="0.1.0",
    description="Two-stage object detectors (Faster/Mask R-CNN, R-FCN, DCN) in PyTorch",
    packages=find_packages(include=["detector", "detector.*"]),
    python_requires=">=3.10",
    ext_modules=[_extension()],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
