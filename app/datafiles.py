"""Reading the data files we train on, score offline, ingest and compare models with: CSV
(comma, semicolon, tab or pipe separated, optionally gzipped) or Parquet. Neutral ground:
training, scoring and the lifecycle all read them. (The database's tables are
app/store/tables.py.)"""

from __future__ import annotations

import gzip
import hashlib
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq


class TableError(ValueError):
    """A table that cannot be read as asked (missing file, unknown format, missing column)."""


def is_parquet(path: Path) -> bool:
    return path.suffix.lower() in {".parquet", ".pq"}


def read_table(path: Path, columns: list[str] | None = None) -> pd.DataFrame:
    """Read a whole CSV/CSV.gz/Parquet file, keeping identifiers as text."""
    if not path.is_file():
        raise TableError(f"{path}: no such file")
    if columns is not None:
        require_columns(path, columns)
    if is_parquet(path):
        return pd.read_parquet(path, columns=columns)
    return pd.read_csv(
        path, sep=csv_separator(path), usecols=columns, dtype=str, keep_default_na=True
    )


def iter_table(path: Path, chunk_rows: int) -> Iterator[pd.DataFrame]:
    """Yield a CSV/Parquet file in chunks of about `chunk_rows` rows, never all of it at once."""
    if not path.is_file():
        raise TableError(f"{path}: no such file")
    if is_parquet(path):
        parquet = pq.ParquetFile(path)
        for batch in parquet.iter_batches(batch_size=chunk_rows):
            yield batch.to_pandas()
    else:
        yield from pd.read_csv(path, sep=csv_separator(path), dtype=str, chunksize=chunk_rows)


def first_rows(path: Path, rows: int) -> pd.DataFrame:
    """The first `rows` rows of a CSV/Parquet file (all of them if fewer), as `iter_table` reads
    them: to check a file before a long load."""
    if not path.is_file():
        raise TableError(f"{path}: no such file")
    if is_parquet(path):
        parquet = pq.ParquetFile(path)
        head = next(parquet.iter_batches(batch_size=rows), None)
        frame: pd.DataFrame = (head or parquet.schema_arrow.empty_table()).to_pandas()
        return frame
    return pd.read_csv(path, sep=csv_separator(path), dtype=str, nrows=rows)


SEPARATORS = (",", ";", "\t", "|")


def csv_separator(path: Path) -> str:
    """The CSV's separator, from its header line: the one of SEPARATORS it holds most of (a
    header with none is one column: comma). Spreadsheets in much of Europe write semicolons,
    database exports often tabs."""
    opener = gzip.open if path.suffix.lower() == ".gz" else open
    with opener(path, "rt", encoding="utf-8", errors="replace", newline="") as handle:
        header = handle.readline(1 << 16)
    counts = {separator: header.count(separator) for separator in SEPARATORS}
    best = max(SEPARATORS, key=counts.__getitem__)
    return best if counts[best] else ","


def count_rows(path: Path) -> int | None:
    """Row count when it is cheap to know (Parquet metadata); None for CSV."""
    if is_parquet(path):
        return int(pq.ParquetFile(path).metadata.num_rows)
    return None


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def normalise_ids(values: pd.Series) -> pd.Series:
    """Customer ids as clean text: '17850.0' (a float-typed export of an integer id) becomes
    '17850', and every id is in Unicode NFC, as the service stores ids
    (app.scoring.validation.canonical_id)."""
    text = values.astype("string").str.strip().str.normalize("NFC")
    return text.str.replace(r"^(\d+)\.0+$", r"\1", regex=True)


SEPARATOR_NAMES = {",": "comma", ";": "semicolon", "\t": "tab", "|": "pipe"}


def require_columns(path: Path, columns: list[str]) -> None:
    """TableError unless the file has every one of `columns`, naming those it has (and, for a
    CSV, the separator it was read with), from its header alone."""
    if not path.is_file():
        raise TableError(f"{path}: no such file")
    if is_parquet(path):
        found = list(pq.read_schema(path).names)
        how = ""
    else:
        separator = csv_separator(path)
        try:
            found = list(pd.read_csv(path, sep=separator, nrows=0).columns)
        except pd.errors.EmptyDataError as exc:
            raise TableError(f"{path}: the file is empty") from exc
        how = f" (read as {SEPARATOR_NAMES[separator]}-separated)"
    missing = [c for c in columns if c not in found]
    if missing:
        raise TableError(
            f"{path}: no column {', '.join(missing)}; its columns are "
            f"{', '.join(map(str, found)) or 'none'}{how}"
        )
