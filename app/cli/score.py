"""`segments score`: a file of customers in, the same rows out with their segments (offline,
in chunks, constant memory)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from app.cli.common import check_output, err, errors_as_messages, progress_bar


def score(
    model: Annotated[Path, typer.Option("--model", help="model folder")],
    input_file: Annotated[
        Path, typer.Option("--input", help="CSV (optionally .gz) or Parquet of customers")
    ],
    output_file: Annotated[
        Path,
        typer.Option(
            "--output", help="CSV, CSV.gz or Parquet (by suffix: .csv, .csv.gz, .parquet)"
        ),
    ],
    chunk_rows: Annotated[int, typer.Option("--chunk-rows", min=1)] = 50_000,
) -> None:
    """Score a file offline, in chunks: the same rows out, with segment columns added."""
    from app.datafiles import count_rows
    from app.scoring.model import SegmentModel
    from app.scoring.offline import OUTPUT_SUFFIXES, score_file

    check_output(output_file, "--output", OUTPUT_SUFFIXES)
    with errors_as_messages():
        loaded = SegmentModel.load(model)
        with progress_bar("scoring") as progress:
            task = progress.add_task("score", total=count_rows(input_file))
            rows = score_file(
                loaded,
                input_file,
                output_file,
                chunk_rows=chunk_rows,
                on_progress=lambda n: progress.advance(task, n),
            )
    err.print(f"scored {rows} rows with model {loaded.version} into {output_file}")
