"""`segments train …`: fit a segmentation model and write models/<version>/."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from app.cli.common import (
    AmountColumn,
    CustomerColumn,
    InvoiceColumn,
    PriceColumn,
    QuantityColumn,
    TimeColumn,
    database,
    err,
    errors_as_messages,
    load_settings,
)
from app.settings import DEFAULT_MODELS_DIR

if TYPE_CHECKING:
    from app.scoring.model import SegmentModel

train_cli = typer.Typer(
    help="Train a segmentation model and write models/<version>/.", no_args_is_help=True
)

KOption = Annotated[
    int | None,
    typer.Option(
        "--segments", min=2, max=30, help="number of segments (default: chosen by silhouette)"
    ),
]
KRange = Annotated[
    str, typer.Option("--k-range", help="range searched when --segments is not given, e.g. 4-8")
]
OutOption = Annotated[Path, typer.Option("--out", help="folder the model version is written under")]
VersionOption = Annotated[
    str | None,
    typer.Option(
        "--version",
        help="version name (default: <date>-<kind>-k<k>-<hash of the data and options>)",
    ),
]
PreviousOption = Annotated[
    str | None,
    typer.Option(
        "--previous",
        help="model folder, registered version or 'active' this retrains: segments that are "
        "still the same customers keep its ids, keys and names",
    ),
]
SeedOption = Annotated[
    int, typer.Option("--seed", help="random seed: same data and seed give the same model")
]


def _k_range(text: str) -> tuple[int, int]:
    try:
        low, high = (int(part) for part in text.split("-", 1))
    except ValueError as exc:
        raise typer.BadParameter(f"{text!r}: give it as LOW-HIGH, e.g. 4-8") from exc
    if not 2 <= low <= high <= 30:
        raise typer.BadParameter(f"{text!r}: need 2 <= LOW <= HIGH <= 30")
    return low, high


def _previous(reference: str | None) -> SegmentModel | None:
    """The model a retraining keeps identities from: a folder, or one the registry resolves
    (app.lifecycle.registry.ModelRegistry.resolve, as `segments models compare` does)."""
    if reference is None:
        return None
    from app.errors import AppError
    from app.lifecycle.registry import ModelRegistry, model_folder
    from app.store.engine import make_engine

    if (local := model_folder(reference)) is not None:
        return local  # no database needed for a folder

    with database(load_settings()) as settings:
        engine = make_engine(settings)
        try:
            return ModelRegistry(engine).resolve(reference)
        except AppError as exc:
            raise ValueError(f"--previous {reference}: no such model folder, and {exc}") from exc
        finally:
            engine.dispose()


@train_cli.command("transactions")
def train_transactions(
    file: Annotated[Path, typer.Argument(help="CSV (optionally .gz) or Parquet of transactions")],
    customer: CustomerColumn,
    time: TimeColumn,
    amount: AmountColumn = None,
    quantity: QuantityColumn = None,
    price: PriceColumn = None,
    invoice: InvoiceColumn = None,
    as_of: Annotated[
        str | None,
        typer.Option(
            "--as-of", help="reference date for recency (default: day after the last transaction)"
        ),
    ] = None,
    segments: KOption = None,
    k_range: KRange = "4-8",
    out: OutOption = DEFAULT_MODELS_DIR,
    version: VersionOption = None,
    seed: SeedOption = 0,
    previous: PreviousOption = None,
    currency: Annotated[
        str | None,
        typer.Option(
            "--currency",
            help="ISO 4217 code of the amounts (e.g. GBP): purchase events in another are refused",
        ),
    ] = None,
) -> None:
    """Train on transactions: RFM features per customer, then KMeans."""
    from app.training.rfm import TransactionColumns
    from app.training.train import train_transactions as run

    started = datetime.now(UTC)
    with errors_as_messages():
        columns = TransactionColumns(customer, time, amount, quantity, price, invoice)
        path = run(
            file,
            columns,
            out_dir=out,
            as_of=date.fromisoformat(as_of) if as_of else None,
            k=segments,
            k_range=_k_range(k_range),
            version=version,
            seed=seed,
            previous=_previous(previous),
            currency=currency.upper() if currency else None,
        )
    _report(path, started)


@train_cli.command("customers")
def train_customers(
    file: Annotated[
        Path, typer.Argument(help="CSV (optionally .gz) or Parquet, one row per customer")
    ],
    id_column: Annotated[str, typer.Option("--id", help="customer id column")],
    numeric: Annotated[
        str, typer.Option("--numeric", help="numeric columns, comma-separated")
    ] = "",
    categorical: Annotated[
        str, typer.Option("--categorical", help="categorical columns, comma-separated")
    ] = "",
    segments: KOption = None,
    k_range: KRange = "4-8",
    out: OutOption = DEFAULT_MODELS_DIR,
    version: VersionOption = None,
    seed: SeedOption = 0,
    previous: PreviousOption = None,
) -> None:
    """Train on a customer table with declared numeric and categorical columns."""
    from app.training.train import train_customers as run

    started = datetime.now(UTC)
    with errors_as_messages():
        path = run(
            file,
            id_column=id_column,
            numeric=[c.strip() for c in numeric.split(",") if c.strip()],
            categorical=[c.strip() for c in categorical.split(",") if c.strip()],
            out_dir=out,
            k=segments,
            k_range=_k_range(k_range),
            version=version,
            seed=seed,
            previous=_previous(previous),
        )
    _report(path, started)


def _report(path: Path, started: datetime) -> None:
    from app.scoring.artifact import load_artifact

    manifest = load_artifact(path).manifest
    if manifest.trained_at < started:  # an automatic version fitted from the same inputs before
        err.print(
            f"{path} holds this model already (trained {manifest.trained_at:%Y-%m-%d %H:%M} from "
            "the same data and options, which the version's hash names): kept as it is"
        )
    else:
        err.print(
            f"wrote {path} (k={len(manifest.segments)}, silhouette {manifest.quality.silhouette})"
        )
    for segment in sorted(manifest.segments, key=lambda s: s.id):
        err.print(f"  {segment.id} {segment.key:<22} {segment.share:6.1%}  {segment.name}")
    if manifest.lineage is not None:  # retrained with --previous: which segments it kept
        from app.training.identity import describe_lineage

        err.print(describe_lineage(manifest))
    print(manifest.version)
