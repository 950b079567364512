"""``python -m xtc_ds.ops.build``: build now, not on first use, every JIT op a job here needs.

That is xtc_ds's fused ops for the CPU (and for CUDA where a GPU is visible) and, on the CPU accelerator,
DeepSpeed's shared-memory all-reduce op that multi-process jobs use; all land in the kernel cache of this
Python environment (:mod:`xtc_ds.ops.cache`). Exits with 1 if one of them fails to build.
"""

from __future__ import annotations

import sys

import xtc_ds  # noqa: F401  (sets the environment's kernel cache before anything builds)
from xtc_ds.distributed import SHM_OP, announce_shm_build, shm_op_applies
from xtc_ds.ops import builder, native


def _deepspeed_shm_op() -> bool:
    from deepspeed.accelerator import get_accelerator

    if not shm_op_applies():
        return True
    announce_shm_build()
    try:
        get_accelerator().create_op_builder("ShareMemCommBuilder").load()
    except Exception as err:  # DeepSpeed reports a failed build with several types
        print(f"DeepSpeed's {SHM_OP} op failed to build: {err}", file=sys.stderr)
        return False
    print(f"DeepSpeed {SHM_OP}: ready in {builder.build_dir(SHM_OP)}")
    return True


def main() -> int:
    import torch

    ok = True
    for device, load in (("cpu", native.load_cpu), ("cuda", native.load_cuda)):
        if device == "cuda" and not torch.cuda.is_available():
            continue
        ok &= native.kernels() == "reference" or load() is not None
        print(f"xtc_ds {device} ops: {native.status()[device]}")
    return 0 if _deepspeed_shm_op() and ok else 1


if __name__ == "__main__":
    sys.exit(main())
