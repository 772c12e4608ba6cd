"""`segments drift`: drift per period from the stored history, as a table (and a chart)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from app.cli.common import (
    check_output,
    database,
    engine_of,
    err,
    errors_as_messages,
    load_settings,
)


def drift(
    since: Annotated[str, typer.Option("--since", help="how far back, e.g. 30d, 12h, 2w")] = "30d",
    every: Annotated[str, typer.Option("--every", help="period length, e.g. 1d, 1h")] = "1d",
    model: Annotated[
        Path | None, typer.Option("--model", help="model folder (default: the served one)")
    ] = None,
    chart: Annotated[
        Path | None,
        typer.Option("--chart", help="also draw a PNG (needs the `chart` extra: matplotlib)"),
    ] = None,
    min_samples: Annotated[
        int, typer.Option("--min-samples", min=1, help="fewer is 'insufficient'")
    ] = 100,
) -> None:
    """Drift per period from the stored history: a table, and with --chart a PNG."""
    from rich.table import Table

    from app.metrics.history import draw_chart, drift_history, parse_span
    from app.scoring.model import SegmentModel

    if chart is not None:
        check_output(chart, "--chart")
    configured = load_settings()
    with errors_as_messages(), database(configured) as settings, engine_of(settings) as engine:
        loaded = SegmentModel.load(model or settings.model_dir)
        period = parse_span(every)
        periods = drift_history(
            engine, loaded, since=parse_span(since), every=period, min_samples=min_samples
        )
    table = Table(title=f"Drift of model {loaded.version} vs training, every {every} over {since}")
    for column in (
        "period start",
        "samples",
        "segment PSI",
        "segment JS",
        *(f"{n} PSI" for n in loaded.feature_names),
    ):
        table.add_column(column, justify="right")
    day_format = "%Y-%m-%d" if period.total_seconds() >= 86_400 else "%m-%d %H:%M"
    for row in periods:
        if row.figures is None:
            cells = ["insufficient"] * (2 + len(loaded.feature_names))
        else:
            f = row.figures
            cells = [f"{f.segment_psi:.3f}", f"{f.segment_js_distance:.3f}"]
            cells += [
                f"{f.features[n].psi:.3f}" if n in f.features else "-" for n in loaded.feature_names
            ]
        table.add_row(row.start.strftime(day_format), str(row.samples), *cells)
    Console(width=max(120, 30 + 14 * len(loaded.feature_names))).print(table)
    if chart is not None:
        with errors_as_messages():
            draw_chart(periods, loaded, chart)
        err.print(f"chart written to {chart}")
