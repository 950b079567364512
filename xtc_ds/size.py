"""``python -m xtc_ds.size DIR``: bytes per module group of an exported folder and the ratio to fp32.

Reads only the safetensors header, so it is instant for any model size. Two ratios are reported, as papers and
users count them: quantized tensors only (fp32 weights of the quantized modules vs their codes and scales),
and the whole file (the fp32 model's parameters vs the file on disk).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

from xtc_ds.errors import exit_on_user_error
from xtc_ds.export.format import DTYPE_BYTES, WEIGHTS_FILE, read_header, read_quantization_config
from xtc_ds.export.sparse_codes import BITMAP, VALUES

__all__ = ["SizeReport", "size_report", "main"]

_FP32 = 4
_PACKED_LEAVES = ("packed_weight", BITMAP, VALUES, "weight_scale", "weight_zero_point")
_CODE_LEAVES = ("packed_weight", BITMAP)  # the tensor that stands for the whole fp32 weight


@dataclass
class SizeReport:
    """Per-group sizes of an exported folder (bytes).

    ``groups`` maps a group name (a weight-quantization group such as ``wq1``, or ``other``) to
    ``(stored bytes, fp32 bytes)``; ``file_bytes`` is the size of ``model.safetensors`` on disk.
    """

    groups: dict[str, list[int]] = field(default_factory=dict)
    file_bytes: int = 0

    @property
    def quantized_ratio(self) -> float:
        """fp32 bytes / stored bytes over the quantized groups only (the ratio papers report)."""
        stored = sum(s for name, (s, _) in self.groups.items() if name != "other")
        full = sum(f for name, (_, f) in self.groups.items() if name != "other")
        return full / stored if stored else 1.0

    @property
    def fp32_bytes(self) -> int:
        return sum(full for _, full in self.groups.values())

    @property
    def file_ratio(self) -> float:
        """fp32 parameter bytes of the same model / bytes of the packed file."""
        return self.fp32_bytes / self.file_bytes

    def table(self) -> str:
        lines = [f"{'group':<12} {'stored MB':>10} {'fp32 MB':>10} {'ratio':>8}"]
        for name, (stored, full) in sorted(self.groups.items()):
            lines.append(f"{name:<12} {stored / 1e6:>10.3f} {full / 1e6:>10.3f} {full / max(stored, 1):>7.1f}x")
        lines.append(f"quantized tensors only: {self.quantized_ratio:.1f}x")
        file_mb, fp32_mb = self.file_bytes / 1e6, self.fp32_bytes / 1e6
        lines.append(f"whole file: {file_mb:.3f} MB vs {fp32_mb:.3f} MB fp32 = {self.file_ratio:.1f}x")
        return "\n".join(lines)


def size_report(folder: Union[str, Path]) -> SizeReport:
    """Sizes of the folder written by :func:`xtc_ds.export_packed`."""
    folder = Path(folder)
    _, specs = read_quantization_config(folder)
    header = read_header(folder / WEIGHTS_FILE)
    report = SizeReport(file_bytes=(folder / WEIGHTS_FILE).stat().st_size)
    for name, info in header.items():
        owner, _, leaf = name.rpartition(".")
        count = 1
        for dim in info["shape"]:
            count *= dim
        stored = count * DTYPE_BYTES[info["dtype"]]
        spec = specs.get(owner)
        if spec is not None and spec.bits is not None and leaf in _PACKED_LEAVES:
            full = spec.out_features * spec.in_features * _FP32 if leaf in _CODE_LEAVES else 0
            group = spec.group or "quantized"
        else:
            full = count * _FP32 if info["dtype"] in ("F32", "F16", "BF16", "F64") else stored
            group = "other"
        totals = report.groups.setdefault(group, [0, 0])
        totals[0] += stored
        totals[1] += full
    return report


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m xtc_ds.size", description=__doc__.splitlines()[0])
    parser.add_argument("folder", help="a folder written by xtc_ds.export_packed")
    folder = parser.parse_args(argv).folder
    print(exit_on_user_error(lambda: size_report(folder)).table())


if __name__ == "__main__":
    main()
