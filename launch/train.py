#!/usr/bin/env python
"""XTC on one text-classification dataset (a GLUE task or your own files): ``deepspeed launch/train.py
--deepspeed_config ds_configs/ds_xtc.json [flags]``.

Also runs as ``python launch/train.py ...`` (one process, no launcher). ``--help`` lists the flags; the
recipe itself lives in ``xtc_ds.recipes.classification.run``.
"""

import sys
from pathlib import Path

try:
    import xtc_ds  # noqa: F401
except ImportError:  # running from a checkout that was not pip-installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from xtc_ds.recipes.classification.run import cli

if __name__ == "__main__":
    cli()
