"""The two ways to train: from transactions (RFM) or from a table of customers."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pandas as pd

from app.datafiles import TableError, normalise_ids, read_table, sha256_of
from app.scoring.artifact import MANIFEST_FILE, write_artifact
from app.scoring.manifest import TrainingData
from app.scoring.model import SegmentModel
from app.training.fit import DEFAULT_K_RANGE, FeaturePlan, FittedModel, fit_model
from app.training.rfm import TransactionColumns, compute_rfm

RFM_PLAN = FeaturePlan(
    numeric=["recency_days", "frequency", "monetary"],
    integer={"frequency"},
    # ranges from what the features mean, not from the training data: live customers may
    # legitimately lie outside what training saw (that is drift, not bad input)
    ranges={
        "recency_days": (0.0, 36_500.0),
        "frequency": (1.0, 1_000_000.0),
        "monetary": (0.0, 1e9),
    },
    descriptions={
        "recency_days": "days since the customer's last purchase",
        "frequency": "number of distinct orders",
        "monetary": "total spend, in the currency of the training data",
    },
)


def train_transactions(
    path: Path,
    columns: TransactionColumns,
    *,
    out_dir: Path,
    as_of: date | None = None,
    k: int | None = None,
    k_range: tuple[int, int] = DEFAULT_K_RANGE,
    version: str | None = None,
    seed: int = 0,
    previous: SegmentModel | None = None,
    currency: str | None = None,
) -> Path:
    """Compute RFM per customer from transactions, fit, and write the artifact; returns its folder.

    With `previous`, segments that are still the same customers keep its ids, keys and names.
    """
    raw = read_table(path, columns.needed())
    rfm = compute_rfm(raw, columns, as_of)
    data = TrainingData(
        kind="transactions",
        file_name=path.name,
        sha256=sha256_of(path),
        rows=len(raw),
        customers=len(rfm.features),
        as_of=rfm.as_of.isoformat(),
        currency=currency,
        options={
            "customer": columns.customer,
            "time": columns.time,
            "amount": columns.amount,
            "quantity": columns.quantity,
            "price": columns.price,
            "invoice": columns.invoice,
            **{f"dropped_{reason}": count for reason, count in rfm.rows_dropped.items()},
        },
    )
    fitted = fit_model(
        rfm.features,
        RFM_PLAN,
        kind="rfm",
        version=version,
        training_data=data,
        k=k,
        k_range=k_range,
        seed=seed,
        previous=previous,
    )
    return _written(fitted, out_dir, automatic=version is None)


def train_customers(
    path: Path,
    *,
    id_column: str,
    numeric: list[str],
    categorical: list[str],
    out_dir: Path,
    k: int | None = None,
    k_range: tuple[int, int] = DEFAULT_K_RANGE,
    version: str | None = None,
    seed: int = 0,
    previous: SegmentModel | None = None,
) -> Path:
    """Fit on a table with one row per customer and declared numeric/categorical columns."""
    if not numeric and not categorical:
        raise TableError("declare at least one --numeric or --categorical column")
    raw = read_table(path, [id_column, *numeric, *categorical])
    frame = pd.DataFrame(index=normalise_ids(raw[id_column]))
    for name in numeric:
        values = pd.to_numeric(raw[name], errors="coerce")
        if values.isna().any():
            bad = int(values.isna().sum())
            raise TableError(f"{path}: column {name} has {bad} empty or non-numeric values")
        frame[name] = values.to_numpy()
    for name in categorical:
        frame[name] = raw[name].astype("string").fillna("unknown").to_numpy()
    if frame.index.duplicated().any():
        raise TableError(
            f"{path}: column {id_column} repeats customer ids; give one row per customer"
        )
    integer = {n for n in numeric if (frame[n] == frame[n].round()).all()}
    plan = FeaturePlan(numeric=numeric, categorical=categorical, integer=integer)
    data = TrainingData(
        kind="customers",
        file_name=path.name,
        sha256=sha256_of(path),
        rows=len(raw),
        customers=len(frame),
        options={"id": id_column},
    )
    fitted = fit_model(
        frame,
        plan,
        kind="customers",
        version=version,
        training_data=data,
        k=k,
        k_range=k_range,
        seed=seed,
        previous=previous,
    )
    return _written(fitted, out_dir, automatic=version is None)


def _written(fitted: FittedModel, out_dir: Path, *, automatic: bool) -> Path:
    """The model's folder, written; an automatic version already there was fitted from the same
    data and options (its name says so), so it is the same model and is kept as it is."""
    target = out_dir / fitted.manifest.version
    if automatic and (target / MANIFEST_FILE).is_file():
        return target
    return write_artifact(fitted.pipeline, fitted.manifest, out_dir)
