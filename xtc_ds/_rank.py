"""This process's rank and the world size: the one fact logging and process-group start-up both need."""

from __future__ import annotations

import os

__all__ = ["rank_and_world"]


def rank_and_world() -> tuple[int, int]:
    """This process's global rank and the world size: from the process group once it exists, else the launcher's
    ``RANK``/``WORLD_SIZE`` (0 and 1 for a plain ``python`` run)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
