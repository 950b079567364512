"""Rows of a data file (CSV, TSV, JSON, JSON Lines) or of a ``datasets`` hub dataset, read by the ``datasets``
library, with positions that name the file and line of every row.

Every file is read into memory through a throw-away cache folder: nothing is left under ``~/.cache`` and a file
edited between two runs is never served from a stale cache.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import logging
import os
import socket
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union
from urllib.parse import urlparse

from xtc_ds._compat import parser_field_counts
from xtc_ds.errors import DataError

__all__ = ["FILE_FORMATS", "Table", "read_table", "load_hub_dataset", "hub_table"]

FILE_FORMATS = {".csv": "csv", ".tsv": "tsv", ".json": "json", ".jsonl": "json"}
"""File extension -> format. CSV is quoted the usual way; TSV (GLUE's files) has no quoting: a ``"`` is text."""


@dataclass(frozen=True)
class Table:
    """Rows from one file or hub split.

    Attributes:
        source: the file (or ``dataset/split``) that messages name.
        rows: the rows as a ``datasets.Dataset``.
        first_line: the line of the first row, for files read line by line; None where rows are records (a JSON
            document, a hub dataset).
    """

    source: str
    rows: Any
    first_line: Optional[int]

    @property
    def columns(self) -> list[str]:
        return list(self.rows.column_names)

    def where(self, index: int) -> str:
        """``file:line`` of row ``index`` (exact also when quoted CSV texts span lines), or ``source: record N``."""
        if self.first_line is None:
            return f"{self.source}: record {index + 1}"
        spanned = sum(
            value.count("\n")
            for row in self.rows.select(range(index))
            for value in row.values()
            if isinstance(value, str)
        )
        return f"{self.source}:{self.first_line + index + spanned}"

    def require_columns(self, names: list[str], flag: str) -> None:
        missing = [name for name in names if name not in self.rows.column_names]
        if missing:
            raise DataError(
                f"{self.source}: no column {', '.join(map(repr, missing))} (columns: {', '.join(self.columns)}); "
                f"name the right one with {flag}"
            )


def _check_utf8(path: Path) -> None:
    """Bytes that are not UTF-8 are an error naming the line (the parser would only say which byte)."""
    raw = path.read_bytes().removeprefix(codecs.BOM_UTF8)
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        raise DataError(
            f"{path}:{line}: not UTF-8 text (byte 0x{raw[err.start]:02x}); convert the file to UTF-8"
        ) from None


@contextlib.contextmanager
def _quiet_datasets() -> Iterator[None]:
    """No progress bars or log lines from ``datasets`` (a parse failure is reported once, by :func:`_explain`);
    pandas' 'data lost' warning becomes an error."""
    import datasets
    import pandas

    bars = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    log = logging.getLogger("datasets")
    level = log.level
    log.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", pandas.errors.ParserWarning)
            yield
    finally:
        log.setLevel(level)
        if bars:
            datasets.enable_progress_bars()


def _explain(path: Path, fmt: str, err: BaseException) -> str:
    """One line saying what is wrong with the file, from whatever the parser raised."""
    cause = err
    while cause.__cause__ is not None or cause.__context__ is not None:
        cause = cause.__cause__ or cause.__context__
    text = str(cause).strip()
    hint = "is there a tab inside a text?" if fmt == "tsv" else "is a text with a comma or quote not quoted?"
    fields = parser_field_counts(text)
    if fields:
        expected, line, saw = fields
        return f"{path}:{line}: {saw} fields, rows have {expected} ({hint})"
    if "Length of header or names does not match" in text:
        return f"{path}: a row has more fields than the header ({hint})"
    return f"{path}: cannot be read as {fmt.upper()} ({type(cause).__name__}: {text.splitlines()[0] if text else ''})"


def read_table(path: Union[str, Path], column_names: Optional[list[str]] = None) -> Table:
    """Read a CSV, TSV, JSON or JSON Lines file (by extension) with ``datasets``.

    Args:
        column_names: names of the columns of a file without a header row (CSV/TSV only).

    Raises:
        DataError: naming the file for a missing file, an unknown extension, text that is not UTF-8, a row with
            more fields than the header (line given), or anything else the parser refuses.
    """
    import datasets

    path = Path(path)
    fmt = FILE_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise DataError(f"{path}: unknown data file type (use {', '.join(FILE_FORMATS)})")
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    _check_utf8(path)
    if fmt == "json":
        builder, options = "json", {}
        first_line = None if path.read_text(encoding="utf-8-sig").lstrip().startswith("[") else 1
    else:
        builder = "csv"
        options = {"keep_default_na": False, "index_col": False, "encoding": "utf-8-sig"}
        if fmt == "tsv":
            options.update(delimiter="\t", quoting=csv.QUOTE_NONE)
        if column_names is not None:
            options["column_names"] = column_names
        first_line = 1 if column_names is not None else 2
    with tempfile.TemporaryDirectory(prefix="xtc_ds-data-") as cache, _quiet_datasets():
        try:
            rows = datasets.load_dataset(
                builder,
                data_files={"train": str(path)},
                split="train",
                cache_dir=cache,
                keep_in_memory=True,
                **options,
            )
        except Exception as err:  # pandas, pyarrow and datasets raise many types; each names a bad file here
            raise DataError(_explain(path, fmt, err)) from None
    if len(rows) == 0:
        raise DataError(f"{path}: no rows")
    return Table(str(path), rows, first_line)


def _offline_reason() -> Optional[str]:
    for flag in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"):
        if os.environ.get(flag, "").lower() in ("1", "true", "yes", "on"):
            return f"{flag} is set"
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        socket.getaddrinfo(host, 443)
    except OSError as err:
        return f"{host} cannot be resolved ({err})"
    return None


def load_hub_dataset(name: str, config: Optional[str], hint: str) -> Any:
    """``datasets.load_dataset(name, config)``, failing at once with ``hint`` (where local data would be read
    from) when the hub cannot be reached or the load fails."""
    where = f"{name}/{config}" if config else name
    reason = _offline_reason()
    if reason is not None:
        raise DataError(f"{hint}; the datasets hub ({where}) is not reachable: {reason}")
    try:
        import datasets
    except ImportError as err:
        raise DataError(f"{hint}; the datasets library cannot be imported: {err}") from err
    try:
        with _quiet_datasets():
            return datasets.load_dataset(name, config)
    except Exception as err:  # any hub failure ends the same way: say where local data would be read from
        raise DataError(f"{hint}; loading {where} from the hub failed: {err}") from err


def hub_table(loaded: Any, name: str, split: str) -> Table:
    """One split of a loaded hub dataset as a :class:`Table` (rows are named as records)."""
    if split not in loaded:
        raise DataError(f"{name}: no split {split!r} (splits: {', '.join(loaded)})")
    return Table(f"{name}[{split}]", loaded[split], None)
