"""Per-customer RFM features (recency, frequency, monetary value) from transactions.

The one definition of the features, used by training (`compute_rfm`, over a table) and by the
service (app.service.events, over the aggregates PostgreSQL keeps from purchase events):

- which transactions count (`is_purchase`): not a cancellation or return (a negative amount, an
  order id starting with C, or a return event);
- what makes an order (`order_key`): its order id, else its moment;
- how amounts add up (`exact_amount`): as the decimals they print as, so a sum is the same
  wherever and in whatever order it is taken;
- the features of a customer's aggregates as of a day (`rfm_features`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal

import numpy as np
import pandas as pd

from app.datafiles import TableError, normalise_ids

RFM_FEATURES = ("recency_days", "frequency", "monetary")
CENT = Decimal("0.01")


def is_purchase(amount: float, order: str | None, kind: str = "order") -> bool:
    """Whether a transaction counts: cancellations and returns do not (training drops them)."""
    return kind == "order" and amount >= 0 and not (order or "").upper().startswith("C")


def order_key(order: str | None, moment: datetime) -> str:
    """What makes transactions one order: the order id, else the moment (without order ids,
    each distinct moment is an order)."""
    return order if order else moment.isoformat()


def exact_amount(amount: float) -> Decimal:
    """An amount as the decimal it prints as (2.55, not 2.54999…): sums of these are exact."""
    return Decimal(repr(float(amount)))


def rfm_features(
    last_purchase: date, orders: int, spend: Decimal, as_of: date
) -> tuple[float, int, float]:
    """(recency_days, frequency, monetary) of a customer's aggregates as of a day: whole days
    since the day of the last purchase, distinct orders, spend rounded to the cent."""
    recency = max((as_of - last_purchase).days, 0)
    return float(recency), orders, float(spend.quantize(CENT, ROUND_HALF_EVEN))


@dataclass(frozen=True)
class TransactionColumns:
    customer: str
    time: str
    amount: str | None = None
    quantity: str | None = None
    price: str | None = None
    invoice: str | None = None

    def __post_init__(self) -> None:
        if (self.amount is None) == (self.quantity is None or self.price is None):
            raise TableError("give either --amount, or both --quantity and --price")

    def needed(self) -> list[str]:
        names = [self.customer, self.time, self.amount, self.quantity, self.price, self.invoice]
        return [n for n in names if n is not None]


@dataclass(frozen=True)
class RfmResult:
    features: pd.DataFrame  # indexed by customer id, columns RFM_FEATURES
    as_of: date
    rows_used: int
    rows_dropped: dict[str, int]


def compute_rfm(
    raw: pd.DataFrame, cols: TransactionColumns, as_of: date | None = None
) -> RfmResult:
    """RFM per customer, dropping rows with no customer and cancellations or returns.

    recency_days: whole days from the customer's last purchase to `as_of` (default: the day after
    the last transaction); frequency: distinct orders (invoices, or distinct timestamps without an
    invoice column); monetary: total spend of the kept rows. The rules are the module's.
    """
    frame = pd.DataFrame({"customer": normalise_ids(raw[cols.customer])})
    frame["time"], amount = check_transactions(raw, cols)
    frame["amount"] = amount
    if cols.invoice is not None:
        frame["order_id"] = raw[cols.invoice].astype("string").str.strip()
    else:
        frame["order_id"] = pd.Series(pd.NA, index=raw.index, dtype="string")

    dropped: dict[str, int] = {}

    def drop(mask: pd.Series, reason: str) -> None:
        nonlocal frame
        dropped[reason] = int(mask.sum())
        frame = frame[~mask]

    drop(frame["customer"].isna() | (frame["customer"] == ""), "no_customer")
    drop(frame["time"].isna() | frame["amount"].isna(), "unparseable")
    order_ids = frame["order_id"].astype(object).where(frame["order_id"].notna(), None).tolist()
    counted = [is_purchase(a, o) for a, o in zip(frame["amount"].tolist(), order_ids, strict=True)]
    drop(~pd.Series(counted, index=frame.index, dtype=bool), "cancellation_or_return")
    if frame.empty:
        raise TableError("no usable transactions left after dropping cancellations and blanks")

    reference = as_of or (frame["time"].max().date() + timedelta(days=1))
    drop(frame["time"].dt.date > reference, "after_as_of")
    # the aggregates the service keeps per customer from purchase events, then the features
    last: dict[str, datetime] = {}
    orders: dict[str, set[str]] = {}
    spend: dict[str, Decimal] = {}
    for customer, when, amount, order in zip(
        frame["customer"].tolist(),
        frame["time"].dt.to_pydatetime(),
        frame["amount"].tolist(),
        frame["order_id"].astype(object).where(frame["order_id"].notna(), None).tolist(),
        strict=True,
    ):
        last[customer] = max(last.get(customer, when), when)
        orders.setdefault(customer, set()).add(order_key(order, when))
        spend[customer] = spend.get(customer, Decimal(0)) + exact_amount(amount)
    customers = sorted(last)
    features = pd.DataFrame(
        [rfm_features(last[c].date(), len(orders[c]), spend[c], reference) for c in customers],
        index=pd.Index(customers, name="customer_id"),
        columns=list(RFM_FEATURES),
    ).astype({"recency_days": np.float64, "frequency": np.int64, "monetary": np.float64})
    return RfmResult(features, reference, len(frame), dropped)


def check_transactions(raw: pd.DataFrame, cols: TransactionColumns) -> tuple[pd.Series, pd.Series]:
    """The rows' times and amounts, parsed; TableError when most rows of a column do not parse:
    then it is the wrong column, or written in a way we do not read, not a few bad rows to skip.
    Training checks its whole file, `segments ingest` the first rows before loading any."""
    times = parse_times(raw[cols.time])
    _most_parse(raw[cols.time], times, f"--time {cols.time}", "time", TIME_EXAMPLE)
    numbers: dict[str, pd.Series] = {}
    for option, column in (
        ("--amount", cols.amount),
        ("--quantity", cols.quantity),
        ("--price", cols.price),
    ):
        if column is not None:
            numbers[option] = pd.to_numeric(raw[column], errors="coerce")
            _most_parse(raw[column], numbers[option], f"{option} {column}", "number", "12.50")
    if cols.amount is not None:
        return times, numbers["--amount"]
    return times, numbers["--quantity"] * numbers["--price"]


TIME_EXAMPLE = "2011-12-09 12:50 or 2011-12-09T12:50:00Z"


def _most_parse(raw: pd.Series, parsed: pd.Series, option: str, what: str, example: str) -> None:
    unparsed = parsed.isna()
    bad = int(unparsed.sum())
    if not len(raw) or bad * 2 <= len(raw):
        return  # a few bad rows are skipped and counted, as the service skips bad events
    seen = raw[unparsed & raw.notna()]
    value = f" (e.g. {str(seen.iloc[0])[:40]!r})" if len(seen) else ""
    raise TableError(
        f"{option}: {bad:,} of {len(raw):,} rows had no parseable {what}{value}; name the "
        f"column of {what}s, written like {example}"
    )


def parse_times(values: pd.Series) -> pd.Series:
    """ISO timestamps, with or without a time of day; other spellings parsed one by one (the
    way training reads a transactions file's times, and `segments ingest` too)."""
    parsed = pd.to_datetime(values, format="ISO8601", errors="coerce")
    if parsed.isna().sum() > values.isna().sum():
        parsed = pd.to_datetime(values, format="mixed", errors="coerce")
    return parsed
