"""``python -m xtc_ds.export --model DIR --deepspeed_config FILE --output_dir DIR [--checkpoint CKPT]``."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Optional

import torch

from xtc_ds.errors import exit_on_user_error
from xtc_ds.export.write import export_packed


def main(argv: Optional[Sequence[str]] = None) -> None:
    """``python -m xtc_ds.export``: export a compressed Hugging Face folder."""
    parser = argparse.ArgumentParser(prog="python -m xtc_ds.export", description=main.__doc__)
    parser.add_argument("--model", required=True, help="Hugging Face folder of the compressed (or cleaned) model")
    parser.add_argument("--deepspeed_config", required=True, help="DeepSpeed JSON with compression_training")
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
    parser.add_argument("--dtype", choices=("float32", "float16"), default="float32", help="unquantized tensors")
    parser.add_argument(
        "--checkpoint", help="DeepSpeed checkpoint directory (or global_stepN folder) whose weights to export"
    )
    args = parser.parse_args(argv)
    out = exit_on_user_error(
        lambda: export_packed(
            args.model,
            args.deepspeed_config,
            args.output_dir,
            dtype=getattr(torch, args.dtype),
            checkpoint=args.checkpoint,
            overwrite=args.overwrite_output_dir,
        )
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
