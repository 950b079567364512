"""xtc_ds: XTC extreme compression (1/2-bit QAT, layer reduction, one-stage KD) for DeepSpeed.

Public API only; the legacy DeepSpeed names are kept so migrating is an import change::

    from xtc_ds import init_compression, redundancy_clean

Importing it points ``TORCH_EXTENSIONS_DIR`` at a kernel cache of this Python environment unless it is set
(:mod:`xtc_ds.ops.cache`).
"""

from xtc_ds.compress import init_compression, redundancy_clean
from xtc_ds.config import CompressionConfig, ConfigError, load_compression_config
from xtc_ds.distill import DistillationLoss, distillation_loss
from xtc_ds.export import PackedFormatError, export_packed, load_cleaned, load_packed
from xtc_ds.inject import inject, revert
from xtc_ds.layer_reduction import build_student
from xtc_ds.matching import InjectionReport
from xtc_ds.onnx_export import export_onnx
from xtc_ds.ops.cache import configure_extensions_dir
from xtc_ds.runtime import XtcRuntime, initialize
from xtc_ds.schedule import CompressionScheduler

configure_extensions_dir()  # before anything builds: xtc_ds's ops or DeepSpeed's

__version__ = "0.1.0"

__all__ = [
    "init_compression",
    "redundancy_clean",
    "initialize",
    "load_compression_config",
    "CompressionConfig",
    "ConfigError",
    "build_student",
    "distillation_loss",
    "DistillationLoss",
    "CompressionScheduler",
    "inject",
    "revert",
    "export_packed",
    "load_packed",
    "load_cleaned",
    "export_onnx",
    "PackedFormatError",
    "InjectionReport",
    "XtcRuntime",
]
