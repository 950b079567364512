"""``python -m xtc_ds.report``: like ``ds_report``, which fused ops are built, compatible and in use, and with what."""

from __future__ import annotations

import shutil
import subprocess


def _version(cmd: list[str]) -> str:
    if shutil.which(cmd[0]) is None:
        return "not found"
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout.strip().splitlines()
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"error: {err}"
    return out[-1] if cmd[0] == "nvcc" and out else (out[0] if out else "unknown")


def main() -> None:
    import torch

    import xtc_ds
    from xtc_ds import ops
    from xtc_ds.ops import builder, native

    for device in ("cpu", "cuda") if torch.cuda.is_available() else ("cpu",):
        native.register_for(device)  # load (or build) the ops so the report says what is in use
    print(
        f"xtc_ds {xtc_ds.__version__}, torch {torch.__version__} (CUDA {torch.version.cuda}), "
        f"CUDA available: {torch.cuda.is_available()}"
    )
    print(f"c++ compiler: {_version(['c++', '--version'])}")
    print(f"nvcc: {_version(['nvcc', '--version'])}")
    print(f"ninja: {_version(['ninja', '--version'])}")
    print(f"sources: {builder.csrc_dir()}")
    print(f"{'op set':<10} {'compatible':<11} {'status'}")
    statuses = native.status()
    print(f"{'cpu':<10} {'yes (' + builder.cpu_isa() + ')':<11} {statuses['cpu']}")
    print(f"cpu flavours this CPU runs: {', '.join(builder.supported_isas())} (XTC_CPU_ISA picks one)")
    print(f"{'cuda':<10} {'yes' if torch.cuda.is_available() else 'no':<11} {statuses['cuda']}")
    fused = ops.kernels() != "reference" and "cpu" in native.registered_devices()
    print(f"kernels: {ops.kernels()} (XTC_KERNELS); in use on cpu: {'fused' if fused else 'reference'}")


if __name__ == "__main__":
    main()
