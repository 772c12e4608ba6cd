"""Backfill: a history of transactions loaded in bulk, then every customer it touched scored.

`segments ingest transactions FILE` reads the file in chunks, with training's column options
and rules (app.training.rfm: which rows count, what makes an order, exact amounts), and loads
it in one transaction: COPY into a staging table, erased customers' rows dropped, then the
statement POST /v1/events runs (app.store.events) stores each row once and grows the
aggregates, marking every customer who grew due now with cause `assignment`. Nothing is
stored unless the whole file is. Then the refresher's queue (app.service.refresher) scores
them in chunks: if the command stops while scoring, the customers stay due and a running
service's refreshers, or the next ingest, finish the work.

Each row's event id is the file's SHA-256 prefix and its row number, so ingesting the same file
again stores nothing more (and events sent over HTTP are never confused with the file's).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from app.clock import Clock
from app.datafiles import TableError, iter_table, normalise_ids, sha256_of
from app.scoring.validation import canonical_id, customer_id_problem
from app.service.event_input import CLOCK_SKEW
from app.service.refresher import Refresher
from app.service.store import Store
from app.store.assignments import IdHash
from app.store.driver import NULL, copy_text
from app.store.engine import without_statement_timeout
from app.store.erasure import erased_among
from app.store.events import (
    copy_staging,
    create_staging,
    record_staged,
    staged_customers,
    unstage,
)
from app.training.rfm import TransactionColumns, exact_amount, is_purchase, order_key, parse_times


@dataclass
class IngestReport:
    rows: int = 0  # read from the file
    stored: int = 0  # events stored now
    duplicate: int = 0  # rows ingested before (the same file again)
    suppressed: int = 0  # rows of erased customers: not stored
    dropped: dict[str, int] = field(default_factory=dict)  # rows skipped, by reason
    customers: int = 0  # customers whose aggregates grew, to be scored
    scored: int = 0  # customers the refresher's queue scored afterwards
    load_seconds: float = 0.0
    score_seconds: float = 0.0


def load_transactions(
    path: Path,
    columns: TransactionColumns,
    *,
    store: Store,
    id_hash: IdHash,
    clock: Clock,
    currency: str | None,
    chunk_rows: int = 100_000,
    on_rows: Callable[[int], None] = lambda _: None,
) -> IngestReport:
    """Load the file's rows as purchase events in one transaction; all or nothing."""
    started = time.perf_counter()
    report = IngestReport()
    file_key = sha256_of(path)[:16]
    now = clock.now()
    with store.transaction("ingest", writing=True) as conn:
        # all or nothing, in one transaction whose statements take as long as the file needs
        without_statement_timeout(conn)
        create_staging(conn)
        for chunk in iter_table(path, chunk_rows):
            missing = [c for c in columns.needed() if c not in chunk.columns]
            if missing:
                raise TableError(f"{path}: no column {', '.join(missing)}")
            payload = _copy_payload(chunk, columns, file_key, report, now, currency)
            copy_staging(conn, payload)
            report.rows += len(chunk)
            on_rows(len(chunk))
        erased = erased_among(conn, staged_customers(conn), id_hash)
        if erased:
            report.suppressed = unstage(conn, sorted(erased))
        report.stored, report.customers = record_staged(conn, now)
    kept = report.rows - sum(report.dropped.values()) - report.suppressed
    report.duplicate = kept - report.stored
    report.load_seconds = time.perf_counter() - started
    return report


def score_loaded(
    refresher: Refresher, report: IngestReport, on_scored: Callable[[int], None] = lambda _: None
) -> None:
    """Score every customer due (those the load grew, and any due already), chunk by chunk."""
    started = time.perf_counter()
    while done := refresher.refresh_chunk():
        report.scored += done
        on_scored(done)
    report.score_seconds = time.perf_counter() - started


def _copy_payload(
    chunk: pd.DataFrame,
    columns: TransactionColumns,
    file_key: str,
    report: IngestReport,
    now: datetime,
    currency: str | None,
) -> str:
    """The chunk's usable rows as staging rows in COPY's text format. Rows with no customer, an
    unreadable time or amount, or a time ahead of the clock are skipped and counted; a customer
    id the service refuses stops the load (nothing is stored)."""
    first_row = report.rows  # rows are numbered from 0 across the file, as read
    customers = normalise_ids(chunk[columns.customer])
    times = parse_times(chunk[columns.time])
    times = times.dt.tz_localize(UTC) if times.dt.tz is None else times.dt.tz_convert(UTC)
    if columns.amount is not None:
        amounts = pd.to_numeric(chunk[columns.amount], errors="coerce")
    else:
        assert columns.quantity is not None
        assert columns.price is not None
        quantity = pd.to_numeric(chunk[columns.quantity], errors="coerce")
        amounts = quantity * pd.to_numeric(chunk[columns.price], errors="coerce")
    if columns.invoice is not None:
        orders = chunk[columns.invoice].astype("string").str.strip()
    else:
        orders = pd.Series(pd.NA, index=chunk.index, dtype="string")
    lines: list[str] = []
    checked: set[str] = set()
    latest = now + CLOCK_SKEW
    for offset, (customer, moment, amount, order) in enumerate(
        zip(
            customers.tolist(),
            times.dt.to_pydatetime(),
            amounts.tolist(),
            orders.astype(object).where(orders.notna(), None).tolist(),
            strict=True,
        )
    ):
        reason = _skipped(customer, moment, amount, latest)
        if reason is not None:
            report.dropped[reason] = report.dropped.get(reason, 0) + 1
            continue
        customer = canonical_id(customer)
        if customer not in checked:
            problem = customer_id_problem(customer)
            if problem is not None:
                raise TableError(
                    f"row {first_row + offset + 1}: customer id {customer!r} {problem}; "
                    "nothing was stored: fix the file and ingest it again"
                )
            checked.add(customer)
        counted = is_purchase(amount, order)
        lines.append(
            f"{file_key}:{first_row + offset}\t{copy_text(customer)}\t{moment.isoformat()}\t"
            f"{amount!r}\torder\t{copy_text(order) if order else NULL}\t{currency or NULL}\t"
            f"{'t' if counted else 'f'}\t{copy_text(order_key(order, moment))}\t"
            f"{exact_amount(amount)}\n"
        )
    return "".join(lines)


def _skipped(customer: object, moment: object, amount: float, latest: object) -> str | None:
    if not isinstance(customer, str) or not customer:
        return "no_customer"
    if moment is None or moment is pd.NaT or not math.isfinite(amount):
        return "unparseable"
    if moment > latest:  # type: ignore[operator]
        return "in_the_future"
    return None
