"""Offline scoring: a CSV/Parquet file of customers in, the same rows out with segment columns."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from app.datafiles import iter_table
from app.scoring.model import SegmentModel


class OfflineInputError(ValueError):
    """Rows that cannot be scored: names the file's row numbers and what is wrong."""


# what score_file writes, by the target's name (anything else would be a guess)
OUTPUT_SUFFIXES = (".csv", ".csv.gz", ".parquet", ".pq")


def score_file(
    model: SegmentModel,
    source: Path,
    target: Path,
    *,
    chunk_rows: int = 50_000,
    on_progress: Callable[[int], None] = lambda _: None,
) -> int:
    """Score `source` chunk by chunk into `target` (CSV or Parquet by suffix); returns rows written.

    The output appears only when every row scored: it is written beside the target and renamed.
    """
    partial = target.with_name(f".{target.name}.partial")
    parquet_out = target.suffix.lower() in {".parquet", ".pq"}
    writer: pq.ParquetWriter | None = None
    written = 0
    try:
        for chunk in iter_table(source, chunk_rows):
            scored = _score_chunk(model, chunk, first_row=written)
            if parquet_out:
                table = pa.Table.from_pandas(scored, preserve_index=False)
                writer = writer or pq.ParquetWriter(partial, table.schema)
                writer.write_table(table)
            else:
                scored.to_csv(
                    partial,
                    mode="a" if written else "w",
                    header=not written,
                    index=False,
                    # from the target's name: the partial file's ends in .partial
                    compression="gzip" if target.suffix.lower() == ".gz" else None,
                )
            written += len(scored)
            on_progress(len(scored))
        if writer is not None:
            writer.close()
            writer = None
        if written == 0:
            raise OfflineInputError(f"{source} has no rows to score")
        os.replace(partial, target)
    finally:
        if writer is not None:
            writer.close()
        partial.unlink(missing_ok=True)
    return written


def _score_chunk(model: SegmentModel, chunk: pd.DataFrame, first_row: int) -> pd.DataFrame:
    scores = model.score_frame(feature_frame(model, chunk, first_row))
    segments = [model.segments_by_cluster[int(c)] for c in scores.clusters]
    out = chunk.copy()
    out["segment_id"] = [s.id for s in segments]
    out["segment_key"] = [s.key for s in segments]
    out["segment_name"] = [s.name for s in segments]
    out["distance"] = np.round(scores.distances, 6)
    out["confidence"] = np.round(scores.confidences, 6)
    return out


def feature_frame(model: SegmentModel, chunk: pd.DataFrame, first_row: int = 0) -> pd.DataFrame:
    """The model's features from a table's columns, checked against its schema (rows named
    from `first_row` + 1 in errors)."""
    missing = [n for n in model.feature_names if n not in chunk.columns]
    if missing:
        found = [str(c) for c in chunk.columns]
        has = ", ".join(found[:20]) + (f" and {len(found) - 20} more" if len(found) > 20 else "")
        raise OfflineInputError(
            f"the input has no column {', '.join(missing)}; model {model.version} needs "
            f"{', '.join(model.feature_names)}, and the input's columns are {has or 'none'}"
        )
    features = pd.DataFrame(index=chunk.index)
    problems: list[str] = []
    for spec in model.features:
        column = chunk[spec.name]
        if spec.type == "category":
            features[spec.name] = column.astype("string").fillna("").astype(object)
            continue
        numbers = pd.to_numeric(column, errors="coerce").astype(np.float64)
        assert spec.minimum is not None
        assert spec.maximum is not None
        bad = ~np.isfinite(numbers) | (numbers < spec.minimum) | (numbers > spec.maximum)
        if spec.type == "integer":
            bad |= numbers != np.round(numbers)
        for position in np.flatnonzero(np.asarray(bad))[:5]:
            problems.append(
                f"row {first_row + position + 1}, {spec.name}: {column.iloc[position]!r} is not "
                f"{'an integer' if spec.type == 'integer' else 'a number'} from {spec.minimum:g} to {spec.maximum:g}"
            )
        features[spec.name] = numbers
    if problems:
        raise OfflineInputError("cannot score: " + "; ".join(problems))
    return features
