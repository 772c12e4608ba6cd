"""`segments ingest transactions FILE`: load a history of purchases in bulk and score everyone."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from app.cli.common import (
    AmountColumn,
    CustomerColumn,
    InvoiceColumn,
    PriceColumn,
    QuantityColumn,
    TimeColumn,
    err,
    errors_as_messages,
    fail,
    progress_bar,
)
from app.cli.rescore import live_store

FIRST_ROWS = 10_000  # checked before anything is loaded: a wrong --time column shows at once

ingest_cli = typer.Typer(
    help="Load purchase histories in bulk, as POST /v1/events would, and score their customers.",
    no_args_is_help=True,
)


@ingest_cli.command("transactions")
def ingest_transactions(
    file: Annotated[
        Path,
        typer.Argument(
            help="CSV (comma, semicolon, tab or pipe separated; optionally .gz) or Parquet"
        ),
    ],
    customer: CustomerColumn,
    time: TimeColumn,
    amount: AmountColumn = None,
    quantity: QuantityColumn = None,
    price: PriceColumn = None,
    invoice: InvoiceColumn = None,
    currency: Annotated[
        str | None,
        typer.Option("--currency", help="ISO 4217 code of the amounts; must be the model's"),
    ] = None,
) -> None:
    """Load a transactions file (the column options of `segments train transactions`) as
    purchase events, all or nothing, then score every customer it touched with the active
    model. Ingesting the same file again stores nothing more."""
    from app.clock import SystemClock
    from app.datafiles import first_rows, require_columns
    from app.errors import EventsUnsupported
    from app.service.activity import follows_purchases
    from app.service.ingest import load_transactions, score_loaded
    from app.training.rfm import TransactionColumns, check_transactions

    with errors_as_messages():  # a wrong column or format stops here, before the database
        columns = TransactionColumns(customer, time, amount, quantity, price, invoice)
        require_columns(file, columns.needed())
        check_transactions(first_rows(file, FIRST_ROWS), columns)
    with live_store("ingest") as live:
        model = live.model
        if not follows_purchases(model):
            raise EventsUnsupported(model.version)
        trained_in = model.manifest.training_data.currency
        if currency and trained_in and currency.upper() != trained_in:
            fail(
                [
                    f"--currency {currency.upper()}: the model's spend is in {trained_in}; "
                    f"convert the amounts to {trained_in} first"
                ]
            )
        with progress_bar(f"loading {file.name}") as progress:
            task = progress.add_task("load", total=None)
            report = load_transactions(
                file,
                columns,
                store=live.store,
                id_hash=live.id_hash,
                clock=SystemClock(),
                currency=(currency or trained_in or "").upper() or None,
                on_rows=lambda rows: progress.advance(task, rows),
            )
        err.print(
            f"loaded {report.rows:,} rows in {report.load_seconds:.1f} s: {report.stored:,} "
            f"events stored, {report.duplicate:,} ingested before, {report.suppressed:,} of "
            f"erased customers not stored"
            + "".join(f", {n:,} skipped ({reason})" for reason, n in report.dropped.items() if n)
            + f"; {report.customers:,} customers to score"
        )
        with progress_bar(f"scoring with {model.version}") as progress:
            task = progress.add_task("score", total=report.customers or None)
            score_loaded(live.refresher, report, lambda done: progress.advance(task, done))
        err.print(
            f"scored {report.scored:,} customers with {model.version} in "
            f"{report.score_seconds:.1f} s"
        )
