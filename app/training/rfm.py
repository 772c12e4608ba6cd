"""Per-customer RFM features (recency, frequency, monetary value) from a table of transactions."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta

import numpy as np
import pandas as pd

from app.datafiles import TableError, normalise_ids

RFM_FEATURES = ("recency_days", "frequency", "monetary")


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
    invoice column); monetary: total spend of the kept rows.
    """
    frame = pd.DataFrame({"customer": normalise_ids(raw[cols.customer])})
    frame["time"] = _parse_times(raw[cols.time])
    if cols.amount is not None:
        frame["amount"] = pd.to_numeric(raw[cols.amount], errors="coerce")
    else:
        assert cols.quantity is not None
        assert cols.price is not None
        quantity = pd.to_numeric(raw[cols.quantity], errors="coerce")
        frame["amount"] = quantity * pd.to_numeric(raw[cols.price], errors="coerce")
    if cols.invoice is not None:
        frame["order"] = raw[cols.invoice].astype("string").str.strip()
    else:
        frame["order"] = frame["time"].astype("string")

    dropped: dict[str, int] = {}

    def drop(mask: pd.Series, reason: str) -> None:
        nonlocal frame
        dropped[reason] = int(mask.sum())
        frame = frame[~mask]

    drop(frame["customer"].isna() | (frame["customer"] == ""), "no_customer")
    drop(frame["time"].isna() | frame["amount"].isna(), "unparseable")
    cancelled = frame["amount"] < 0
    if cols.invoice is not None:
        cancelled |= frame["order"].str.upper().str.startswith("C").fillna(False)
    drop(cancelled, "cancellation_or_return")
    if frame.empty:
        raise TableError("no usable transactions left after dropping cancellations and blanks")

    reference = as_of or (frame["time"].max().date() + timedelta(days=1))
    drop(frame["time"].dt.date > reference, "after_as_of")
    grouped = frame.groupby("customer", sort=True)
    last = grouped["time"].max()
    recency = (pd.Timestamp(reference) - last.dt.normalize()).dt.days.clip(lower=0)
    features = pd.DataFrame(
        {
            "recency_days": recency.astype(np.float64),
            "frequency": grouped["order"].nunique().astype(np.int64),
            "monetary": grouped["amount"].sum().round(2).astype(np.float64),
        }
    )
    features.index.name = "customer_id"
    return RfmResult(features, reference, len(frame), dropped)


def _parse_times(values: pd.Series) -> pd.Series:
    """ISO timestamps, with or without a time of day; other spellings parsed one by one."""
    parsed = pd.to_datetime(values, format="ISO8601", errors="coerce")
    if parsed.isna().sum() > values.isna().sum():
        parsed = pd.to_datetime(values, format="mixed", errors="coerce")
    return parsed
