"""The augmented rows on disk: one folder of flat arrays, written once, verified and memory-mapped when read.

A variant is stored as an edit of its source row, never as text: ``source[v]`` is the row it copies and
``positions``/``tokens[offsets[v]:offsets[v+1]]`` the tokens it puts in. Twenty variants of a 100k-row set are
then a few tens of MB that are read from disk as batches need them, not millions of Python strings.

Layout of the folder (written by :func:`~xtc_ds.files.replace_dir_atomic`, so it is complete or absent)::

    source.bin, offsets.bin, positions.bin, tokens.bin    little-endian arrays (dtypes in :data:`ARRAYS`)
    xtc_augmentation.json                                 key, settings, counts, sha256 of every array
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from xtc_ds.errors import DataError
from xtc_ds.files import replace_dir_atomic, write_json_atomic

__all__ = ["AugmentSettings", "AugmentedEdits", "META_FILE", "ARRAYS", "read_edits", "write_edits"]

META_FILE = "xtc_augmentation.json"
FORMAT_VERSION = 1
ARRAYS = {"source": "<i8", "offsets": "<i8", "positions": "<i4", "tokens": "<i4"}


@dataclass(frozen=True)
class AugmentSettings:
    """TinyBERT's word replacement: ``variants`` tries per text (TinyBERT: 20), each word replaced with
    probability ``prob`` (0.4) by one of its ``candidates`` nearest words (15), seeded by ``seed`` and the row."""

    variants: int = 20
    prob: float = 0.4
    candidates: int = 15
    seed: int = 42

    def __post_init__(self) -> None:
        if self.variants < 1:
            raise ValueError(f"augmentation variants {self.variants} (must be an integer >= 1)")
        if not 0.0 < self.prob <= 1.0:
            raise ValueError(f"augmentation prob {self.prob} (must be in (0, 1])")
        if self.candidates < 1:
            raise ValueError(f"augmentation candidates {self.candidates} (must be an integer >= 1)")


class AugmentedEdits:
    """The variants of a cached folder, memory-mapped (:func:`read_edits`)."""

    def __init__(self, folder: Path, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        self.folder = folder
        self.source = arrays["source"]
        self.offsets = arrays["offsets"]
        self.positions = arrays["positions"]
        self.tokens = arrays["tokens"]
        self.meta = meta

    def __len__(self) -> int:
        return len(self.source)

    def edit(self, variant: int) -> tuple[int, torch.Tensor, torch.Tensor]:
        """``(source row, positions, tokens)`` of one variant."""
        start, stop = int(self.offsets[variant]), int(self.offsets[variant + 1])
        positions = torch.from_numpy(np.array(self.positions[start:stop], dtype=np.int64))
        tokens = torch.from_numpy(np.array(self.tokens[start:stop], dtype=np.int64))
        return int(self.source[variant]), positions, tokens

    def apply(self, variants: torch.Tensor, source_ids: torch.Tensor) -> torch.Tensor:
        """The input ids of ``variants`` given their source rows' ids (``[len(variants), length]``)."""
        ids = source_ids.clone()
        for b, variant in enumerate(variants.tolist()):
            _, positions, tokens = self.edit(variant)
            ids[b, positions] = tokens.to(ids.dtype)
        return ids


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_edits(folder: Path, key: str) -> Optional[AugmentedEdits]:
    """The cached variants in ``folder`` if they were made for ``key``; None where there are none or they were made
    for other data or settings (the caller computes them again).

    Raises:
        DataError: naming the file, for a cache that is unreadable, truncated or altered.
    """
    meta_path = folder / META_FILE
    if not meta_path.is_file():
        return None
    damaged = f"; delete {folder} to compute the augmentation again"
    try:
        meta = json.loads(meta_path.read_bytes())
        files, counts = meta["files"], meta["counts"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise DataError(f"{meta_path}: unreadable augmentation cache ({err}){damaged}") from None
    if meta.get("version") != FORMAT_VERSION or meta.get("key") != key:
        return None
    arrays = {}
    for name, dtype in ARRAYS.items():
        path = folder / f"{name}.bin"
        expected = counts.get(name, -1) * np.dtype(dtype).itemsize
        if not path.is_file() or path.stat().st_size != expected:
            raise DataError(f"{path}: missing or truncated (expected {expected} bytes){damaged}")
        if _sha256(path) != files.get(name):
            raise DataError(f"{path}: its contents differ from the sha256 in {META_FILE}{damaged}")
        arrays[name] = np.memmap(path, dtype=dtype, mode="r") if expected else np.zeros(0, dtype=dtype)
    offsets = arrays["offsets"]
    if len(offsets) != len(arrays["source"]) + 1 or offsets[-1] != len(arrays["tokens"]):
        raise DataError(f"{folder / 'offsets.bin'}: does not match source.bin and tokens.bin{damaged}")
    return AugmentedEdits(folder, arrays, meta)


def write_edits(
    folder: Path,
    key: str,
    settings: AugmentSettings,
    batches: Iterable[list[tuple[int, np.ndarray, np.ndarray]]],
    info: dict[str, Any],
) -> AugmentedEdits:
    """Stream variants ``(source row, positions, tokens)`` to ``folder`` (replacing it atomically) and open them.

    ``batches`` is consumed as it is written; ``info`` (the source of candidates) and the seconds it took go
    into the metadata.
    """

    def fill(new: Path) -> None:
        started = time.time()
        handles = {name: open(new / f"{name}.bin", "wb") for name in ARRAYS}
        digests = {name: hashlib.sha256() for name in ARRAYS}
        counts = dict.fromkeys(ARRAYS, 0)

        def put(name: str, values: np.ndarray) -> None:
            data = np.ascontiguousarray(values, dtype=ARRAYS[name]).tobytes()
            handles[name].write(data)
            digests[name].update(data)
            counts[name] += len(values)

        try:
            put("offsets", np.zeros(1))
            edits = 0
            for batch in batches:
                if not batch:
                    continue
                put("source", np.array([source for source, _, _ in batch]))
                put("positions", np.concatenate([positions for _, positions, _ in batch]))
                put("tokens", np.concatenate([tokens for _, _, tokens in batch]))
                ends = edits + np.cumsum([len(tokens) for _, _, tokens in batch])
                put("offsets", ends)
                edits = int(ends[-1])
        finally:
            for handle in handles.values():
                handle.close()
        meta = {
            "version": FORMAT_VERSION,
            "key": key,
            "settings": asdict(settings),
            "counts": counts,
            "files": {name: digest.hexdigest() for name, digest in digests.items()},
            "seconds": round(time.time() - started, 2),
            **info,
        }
        write_json_atomic(new / META_FILE, meta)

    replace_dir_atomic(folder, fill)
    edits = read_edits(folder, key)
    assert edits is not None  # just written for this key
    return edits
