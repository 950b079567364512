"""``python -m xtc_ds.ops.build``: build the fused ops now (into the torch extensions cache), not on first use."""

from __future__ import annotations

import sys

from xtc_ds.ops import builder


def main() -> int:
    module = builder.build_cpu(verbose=True)
    print(f"built {module.__name__} ({builder.cpu_isa()}) from {builder.csrc_dir()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
