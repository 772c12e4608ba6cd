"""`segments export`: a segment's audience to a file, as the HTTP export streams it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from app.cli.common import (
    check_output,
    choice,
    database,
    engine_of,
    err,
    errors_as_messages,
    load_settings,
    progress_bar,
)


def export_audience(
    segment: Annotated[str, typer.Option("--segment", help="the segment key, e.g. champions")],
    out: Annotated[Path, typer.Option("--out", help="file to write")],
    export_format: Annotated[
        str | None,
        typer.Option(
            "--format", help="csv or ndjson; default: from --out's suffix (.csv, .ndjson)"
        ),
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

    if export_format is None:  # from the name; one that says neither is refused, not guessed
        check_output(out, "--out", (".csv", ".ndjson", ".jsonl"))
        export_format = "ndjson" if out.suffix.lower() in {".ndjson", ".jsonl"} else "csv"
    check_output(out, "--out")
    chosen_format = choice(ExportFormat, export_format, "--format", exclude=ExportFormat.JSON)
    chosen_purpose = choice(Purpose, purpose, "--purpose")
    chosen_identifiers = choice(Identifiers, identifiers, "--identifiers")
    if not identifiers_allowed(chosen_identifiers, chosen_purpose):
        raise typer.BadParameter(IDENTIFIERS_NEED_ADVERTISING, param_hint="--identifiers")
    partial = out.with_name(f".{out.name}.partial")
    configured = load_settings()
    try:
        with errors_as_messages(), database(configured) as settings, engine_of(settings) as engine:
            store = Store(engine)
            models = ModelHolder(store.call(lambda: ModelRegistry(engine).resolve(ACTIVE)))
            audiences = AudienceService(models, store, max_exports=1)
            first, render = renderer(chosen_format, segment, chosen_identifiers)
            with audiences.export(segment, chosen_purpose, 5_000) as export:
                total = export.size()
                with partial.open("wb") as sink, progress_bar(f"{segment} ({purpose})") as progress:
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
