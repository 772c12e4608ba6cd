"""The data commands: `segments score` (a file, offline), `segments drift` (from the stored
history) and `segments export` (an audience, as the HTTP export streams it)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from app.cli.common import choice, database, err, errors_as_messages, load_settings

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from app.settings import Settings


def _progress(label: str) -> Progress:
    columns = [TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    return Progress(*columns, console=err, transient=True)


@contextmanager
def _engine(settings: Settings) -> Iterator[Engine]:
    from app.store.engine import make_engine

    engine = make_engine(settings)
    try:
        yield engine
    finally:
        engine.dispose()


def score(
    model: Annotated[Path, typer.Option("--model", help="model folder")],
    input_file: Annotated[
        Path, typer.Option("--input", help="CSV (optionally .gz) or Parquet of customers")
    ],
    output_file: Annotated[Path, typer.Option("--output", help="CSV or Parquet (by suffix)")],
    chunk_rows: Annotated[int, typer.Option("--chunk-rows", min=1)] = 50_000,
) -> None:
    """Score a file offline, in chunks: the same rows out, with segment columns added."""
    from app.scoring.model import SegmentModel
    from app.scoring.offline import score_file
    from app.tables import count_rows

    with errors_as_messages():
        loaded = SegmentModel.load(model)
        with _progress("scoring") as progress:
            task = progress.add_task("score", total=count_rows(input_file))
            rows = score_file(
                loaded,
                input_file,
                output_file,
                chunk_rows=chunk_rows,
                on_progress=lambda n: progress.advance(task, n),
            )
    err.print(f"scored {rows} rows with model {loaded.version} into {output_file}")


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

    configured = load_settings()
    with errors_as_messages(), database(configured) as settings, _engine(settings) as engine:
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


def export_audience(
    segment: Annotated[str, typer.Option("--segment", help="the segment key, e.g. champions")],
    out: Annotated[Path, typer.Option("--out", help="file to write")],
    export_format: Annotated[
        str | None,
        typer.Option("--format", help="csv or ndjson; default: from --out's suffix, else csv"),
    ] = None,
    purpose: Annotated[
        str,
        typer.Option(
            "--purpose",
            help="personalization: all but those who objected; advertising: only customers who "
            "opted in (use it for ad platforms)",
        ),
    ] = "personalization",
    identifiers: Annotated[
        str,
        typer.Option(
            "--identifiers", help="none, google or meta: add email_sha256 and phone_sha256"
        ),
    ] = "none",
) -> None:
    """Export a segment's audience of the registry's active model, exactly as GET
    /v1/segments/{key}/members streams it (app.service.audiences): one snapshot, constant
    memory, a progress bar; the file appears only when complete."""
    from app.audience.consent import Purpose
    from app.audience.formats import (
        IDENTIFIERS_NEED_ADVERTISING,
        ExportFormat,
        Identifiers,
        identifiers_allowed,
        renderer,
    )
    from app.lifecycle.holder import ModelHolder
    from app.lifecycle.registry import ACTIVE, ModelRegistry
    from app.service.audiences import AudienceService
    from app.service.store import Store

    if export_format is None:
        export_format = "ndjson" if out.suffix.lower() in {".ndjson", ".jsonl"} else "csv"
    chosen_format = choice(ExportFormat, export_format, "--format", exclude=ExportFormat.JSON)
    chosen_purpose = choice(Purpose, purpose, "--purpose")
    chosen_identifiers = choice(Identifiers, identifiers, "--identifiers")
    if not identifiers_allowed(chosen_identifiers, chosen_purpose):
        raise typer.BadParameter(IDENTIFIERS_NEED_ADVERTISING, param_hint="--identifiers")
    partial = out.with_name(f".{out.name}.partial")
    configured = load_settings()
    try:
        with errors_as_messages(), database(configured) as settings, _engine(settings) as engine:
            store = Store(engine, schema_head=None)
            models = ModelHolder(store.call(lambda: ModelRegistry(engine).resolve(ACTIVE)))
            audiences = AudienceService(models, store, max_exports=1)
            first, render = renderer(chosen_format, segment, chosen_identifiers)
            with audiences.export(segment, chosen_purpose, 5_000) as export:
                total = export.size()
                with partial.open("wb") as sink, _progress(f"{segment} ({purpose})") as progress:
                    task = progress.add_task("export", total=total)
                    sink.write(first)
                    for chunk in export.chunks:
                        sink.write(render(chunk))
                        progress.advance(task, len(chunk))
            partial.replace(out)  # readers never see half a file
    finally:
        partial.unlink(missing_ok=True)
    err.print(
        f"wrote {total} members of {segment} ({chosen_purpose}) to {out}; follow their changes "
        "from this snapshot with GET /v1/changes?since=<the cursor below>"
    )
    print(export.feed_cursor)
