"""``python -m xtc_ds.export --model DIR --output_dir DIR [--format packed|onnx] [--deepspeed_config FILE] ...``."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Optional

import torch

from xtc_ds.errors import ConfigError, exit_on_user_error
from xtc_ds.export.write import export_packed
from xtc_ds.onnx_export.options import BLOCK_SIZES, AccuracyLevel, LinearOp, OnnxExportOptions


def _export(args: argparse.Namespace):
    if args.format == "onnx":
        from xtc_ds.onnx_export import export_onnx

        options = OnnxExportOptions(args.accuracy_level, args.block_size, args.one_bit_storage, args.linear_op)
        return export_onnx(
            args.model, args.output_dir, args.deepspeed_config, overwrite=args.overwrite_output_dir, options=options
        )
    if args.deepspeed_config is None:
        raise ConfigError("--deepspeed_config: required for --format packed (the config the model was trained with)")
    return export_packed(
        args.model,
        args.deepspeed_config,
        args.output_dir,
        dtype=getattr(torch, args.dtype),
        checkpoint=args.checkpoint,
        overwrite=args.overwrite_output_dir,
    )


def main(argv: Optional[Sequence[str]] = None) -> None:
    """``python -m xtc_ds.export``: export a compressed Hugging Face folder (packed, or ONNX Runtime)."""
    parser = argparse.ArgumentParser(prog="python -m xtc_ds.export", description=main.__doc__)
    parser.add_argument(
        "--model",
        required=True,
        help="Hugging Face folder of the compressed (or cleaned) model; for --format onnx also a packed export",
    )
    parser.add_argument(
        "--deepspeed_config",
        help="DeepSpeed JSON with compression_training (needed unless --format onnx reads a packed export)",
    )
    parser.add_argument(
        "--output_dir",
        required=True,
        help="folder to write: new, empty or an earlier export (replaced atomically); never the --model folder",
    )
    parser.add_argument(
        "--overwrite_output_dir",
        action="store_true",
        help="also replace a non-empty --output_dir that is not an earlier export (everything in it is lost)",
    )
    parser.add_argument(
        "--format",
        choices=("packed", "onnx"),
        default="packed",
        help="packed: xtc_ds's packed folder (load_packed); onnx: model.onnx with MatMulNBits for ONNX Runtime",
    )
    parser.add_argument("--dtype", choices=("float32", "float16"), default="float32", help="unquantized tensors")
    parser.add_argument(
        "--checkpoint", help="DeepSpeed checkpoint directory (or global_stepN folder) whose weights to export"
    )
    parser.add_argument(
        "--accuracy_level",
        type=int,
        choices=[int(level) for level in AccuracyLevel],
        default=int(OnnxExportOptions.accuracy_level),
        help="onnx: 4 = int8 activations inside MatMulNBits (fast), 0 = float32 with xtc_ds's own activation grid",
    )
    parser.add_argument(
        "--block_size",
        type=int,
        choices=BLOCK_SIZES,
        default=OnnxExportOptions.block_size,
        help="onnx: codes per scale along a row",
    )
    parser.add_argument(
        "--one_bit_storage",
        action="store_true",
        help="onnx: binary weights at 1 bit in the file (about a third smaller; more memory while ONNX Runtime loads)",
    )
    parser.add_argument(
        "--linear_op",
        choices=[op.value for op in LinearOp],
        default=OnnxExportOptions.linear_op.value,
        help="onnx: MatMulIntegerToFloat = ONNX Runtime's int8 GEMM, weights rebuilt at load from their 1/2/4-bit "
        "codes (fastest where ONNX Runtime's int8 kernels use AMX or VNNI; activations quantized per tensor)",
    )
    args = parser.parse_args(argv)
    if args.format == "onnx" and (args.checkpoint or args.dtype != "float32"):
        parser.error("--checkpoint and --dtype are for --format packed (export it first, then --format onnx)")
    out = exit_on_user_error(lambda: _export(args))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
