"""The `segments` command: train, serve, migrate, score."""

from __future__ import annotations

import copy
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from app.lifecycle.commands import models_cli
from app.settings import DEFAULT_MODELS_DIR, Settings

if TYPE_CHECKING:
    from app.scoring.artifact import Artifact

cli = typer.Typer(
    help="Customer segment scoring: train models, serve them, score files.", no_args_is_help=True
)
train_cli = typer.Typer(
    help="Train a segmentation model and write models/<version>/.", no_args_is_help=True
)
cli.add_typer(train_cli, name="train")
cli.add_typer(models_cli, name="models")
keys_cli = typer.Typer(help="API keys: make one and the entry to configure.", no_args_is_help=True)
cli.add_typer(keys_cli, name="keys")
err = Console(stderr=True)

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
    str | None, typer.Option("--version", help="version name (default: <date>-<kind>-k<k>)")
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


@train_cli.command("transactions")
def train_transactions(
    file: Annotated[Path, typer.Argument(help="CSV (optionally .gz) or Parquet of transactions")],
    customer: Annotated[str, typer.Option("--customer", help="customer id column")],
    time: Annotated[str, typer.Option("--time", help="transaction timestamp column")],
    amount: Annotated[
        str | None, typer.Option("--amount", help="spend column (or --quantity and --price)")
    ] = None,
    quantity: Annotated[str | None, typer.Option("--quantity")] = None,
    price: Annotated[str | None, typer.Option("--price")] = None,
    invoice: Annotated[
        str | None, typer.Option("--invoice", help="order id column; 'C…' ids are cancellations")
    ] = None,
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
) -> None:
    """Train on transactions: RFM features per customer, then KMeans."""
    from app.training.rfm import TransactionColumns
    from app.training.train import previous_model
    from app.training.train import train_transactions as run

    with _errors_as_messages():
        columns = TransactionColumns(customer, time, amount, quantity, price, invoice)
        base = previous_model(previous, Settings()) if previous else None
        path = run(
            file,
            columns,
            out_dir=out,
            as_of=date.fromisoformat(as_of) if as_of else None,
            k=segments,
            k_range=_k_range(k_range),
            version=version,
            seed=seed,
            previous=base,
        )
    _report(path)


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
    from app.training.train import previous_model
    from app.training.train import train_customers as run

    with _errors_as_messages():
        base = previous_model(previous, Settings()) if previous else None
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
            previous=base,
        )
    _report(path)


@cli.command()
def serve(
    model: Annotated[
        Path | None, typer.Option("--model", help="model folder (default: models/ and its DEFAULT)")
    ] = None,
    host: Annotated[str, typer.Option("--host")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port")] = 8000,
    workers: Annotated[
        int, typer.Option("--workers", min=1, help="worker processes sharing the port")
    ] = 1,
) -> None:
    """Serve the HTTP API with uvicorn."""
    import uvicorn

    if model is not None:
        os.environ["SEGMENTS_MODEL_DIR"] = str(model.resolve())
    settings = Settings()
    with _errors_as_messages():
        from app.scoring.artifact import load_artifact

        artifact = load_artifact(settings.model_dir)  # refuse a bad model before any worker starts
    if model is not None or settings.model_activate_on_start:
        # an explicit --model is the operator's choice: activate it once, here. Were each worker
        # to do it at its start, a worker that uvicorn restarts later would undo every
        # activation made since (`segments models activate`, POST /v1/models/.../activate).
        # The workers' own start-up checks (keys, erasure key) run first: a server that cannot
        # start must not switch the whole fleet's model on its way down.
        from app.main import check_settings

        try:
            check_settings(settings)
            # binding is the other start-up failure: try the address before switching models
            socket.create_server((host, port)).close()
        except (RuntimeError, ValueError) as exc:
            err.print(f"[red]error:[/red] {exc}")
            raise typer.Exit(2) from exc
        except OSError as exc:
            err.print(f"[red]error:[/red] cannot listen on {host}:{port}: {exc.strerror}")
            raise typer.Exit(2) from exc
        _activate_at_launch(settings, artifact)
        os.environ["SEGMENTS_MODEL_ACTIVATE_ON_START"] = "false"
    if workers > 1:
        _fresh_multiprocess_dir()
    uvicorn.run(
        "app.main:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level=settings.log_level,
        log_config=_log_config(settings.log_level),
        access_log=False,
        proxy_headers=False,
        # a worker that does not answer the supervisor's ping in time is killed and restarted;
        # uvicorn's 5 s kills workers still importing on a CPU-starved (throttled) machine
        timeout_worker_healthcheck=settings.worker_healthcheck_seconds,
    )


def _activate_at_launch(settings: Settings, artifact: Artifact) -> None:
    """Register and activate the launch model in the registry, once for the whole server."""
    from sqlalchemy.exc import SQLAlchemyError

    from app.errors import AppError
    from app.lifecycle.registry import ModelRegistry
    from app.scoring.model import SegmentModel
    from app.store.engine import make_engine

    engine = make_engine(settings)
    try:
        ModelRegistry(engine).bootstrap(SegmentModel(artifact), activate=True)
    except AppError as exc:  # e.g. this version is registered with another artifact
        err.print(f"[red]error:[/red] {artifact.manifest.version} cannot be activated: {exc}")
        raise typer.Exit(2) from exc
    except SQLAlchemyError as exc:
        err.print(
            f"[yellow]warning:[/yellow] could not activate {artifact.manifest.version} in the "
            f"model registry ({type(exc).__name__}); it serves until the store answers, then "
            "the registry's active version does. Run `segments models activate "
            f"{artifact.manifest.version}` once the store is up."
        )
    finally:
        engine.dispose()


def _log_config(level: str) -> dict[str, Any]:
    """uvicorn's logging, with the service's own `app.*` loggers on the same handler, so
    model switches, load failures and the start-up summary reach the operator."""
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config["loggers"]["app"] = {"handlers": ["default"], "level": level.upper(), "propagate": False}
    return config


def _fresh_multiprocess_dir() -> None:
    """Counters summed over workers: prometheus_client's multiprocess mode, set before workers start."""
    folder = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not folder:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="segments-metrics-")
        return
    # the client's docs: empty the folder between runs, or old workers' counts leak in. Empty
    # it rather than remove it: in Kubernetes it is a mounted emptyDir that cannot be removed.
    path = Path(folder)
    path.mkdir(parents=True, exist_ok=True)
    for entry in path.iterdir():
        if entry.is_dir():
            shutil.rmtree(entry)
        else:
            entry.unlink()


@cli.command()
def migrate() -> None:
    """Apply the database migrations (DATABASE_URL; embedded SQLite ./segments.db by default)."""
    from app.store.migrate import upgrade

    with _errors_as_messages():
        upgrade(Settings().database_url_text)
    err.print("[green]database schema is up to date[/green]")


@cli.command()
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
    from app.training.tables import count_rows

    with _errors_as_messages():
        loaded = SegmentModel.load(model)
        columns = [TextColumn("scoring"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
        with Progress(*columns, console=err, transient=True) as progress:
            task = progress.add_task("score", total=count_rows(input_file))
            rows = score_file(
                loaded,
                input_file,
                output_file,
                chunk_rows=chunk_rows,
                on_progress=lambda n: progress.advance(task, n),
            )
    err.print(f"scored {rows} rows with model {loaded.version} into {output_file}")


@cli.command()
def drift(
    since: Annotated[str, typer.Option("--since", help="how far back, e.g. 30d, 12h, 2w")] = "30d",
    every: Annotated[str, typer.Option("--every", help="period length, e.g. 1d, 1h")] = "1d",
    model: Annotated[
        Path | None, typer.Option("--model", help="model folder (default: the served one)")
    ] = None,
    chart: Annotated[Path, typer.Option("--chart", help="PNG to write")] = Path("drift.png"),
    min_samples: Annotated[
        int, typer.Option("--min-samples", min=1, help="fewer is 'insufficient'")
    ] = 100,
) -> None:
    """Drift per period from the stored history (DATABASE_URL): a table, and a PNG chart."""
    from rich.table import Table

    from app.metrics.history import draw_chart, drift_history, parse_span
    from app.scoring.model import SegmentModel
    from app.store.engine import make_engine

    with _errors_as_messages():
        settings = Settings()
        loaded = SegmentModel.load(model or settings.model_dir)
        engine = make_engine(settings)
        period = parse_span(every)
        try:
            periods = drift_history(
                engine,
                loaded,
                since=parse_span(since),
                every=period,
                min_samples=min_samples,
            )
        finally:
            engine.dispose()
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
    draw_chart(periods, loaded, chart)
    err.print(f"chart written to {chart}")


@cli.command("export")
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
    """Export a segment's audience from the database (DATABASE_URL), as GET
    /v1/segments/{key}/members streams it: one snapshot, constant memory, a progress bar."""
    from app.audience.consent import Purpose
    from app.audience.formats import (
        IDENTIFIERS_NEED_ADVERTISING,
        ExportFormat,
        Identifiers,
        identifiers_allowed,
        renderer,
    )
    from app.lifecycle.registry import ModelRegistry
    from app.service import feed_cursor
    from app.store import audiences
    from app.store.engine import make_engine

    if export_format is None:
        export_format = "ndjson" if out.suffix.lower() in {".ndjson", ".jsonl"} else "csv"
    chosen_format = _choice(ExportFormat, export_format, "--format", exclude=ExportFormat.JSON)
    chosen_purpose = _choice(Purpose, purpose, "--purpose")
    chosen_identifiers = _choice(Identifiers, identifiers, "--identifiers")
    if not identifiers_allowed(chosen_identifiers, chosen_purpose):
        raise typer.BadParameter(IDENTIFIERS_NEED_ADVERTISING, param_hint="--identifiers")
    settings = Settings()
    engine = make_engine(settings)
    partial = out.with_name(f".{out.name}.partial")
    try:
        known = {
            s["key"]
            for version in ModelRegistry(engine).listed()
            for s in version.manifest.get("segments", [])
        }
        if segment not in known:
            raise typer.BadParameter(
                f"no registered model has a segment {segment!r}; known: {', '.join(sorted(known))}",
                param_hint="--segment",
            )
        first, render = renderer(chosen_format, segment, chosen_identifiers)
        with engine.begin() as conn, partial.open("wb") as sink:
            audiences.begin_snapshot(conn)
            position = audiences.feed_position(conn)
            total = audiences.audience_size(conn, segment, chosen_purpose)
            sink.write(first)
            with Progress(
                TextColumn(f"{segment} ({chosen_purpose})"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=err,
            ) as progress:
                task = progress.add_task("export", total=total)
                for chunk in audiences.stream_members(conn, segment, chosen_purpose, 5_000):
                    sink.write(render(chunk))
                    progress.advance(task, len(chunk))
        partial.replace(out)  # readers never see half a file
    finally:
        partial.unlink(missing_ok=True)
        engine.dispose()
    err.print(
        f"wrote {total} members of {segment} ({chosen_purpose}) to {out}; follow their changes "
        "from this snapshot with GET /v1/changes?since=<the cursor below>"
    )
    print(feed_cursor(position))


Choice = TypeVar("Choice", bound=StrEnum)


def _choice(kind: type[Choice], value: str, option: str, exclude: Choice | None = None) -> Choice:
    allowed = [member for member in kind if member is not exclude]
    for member in allowed:
        if member.value == value.lower():
            return member
    raise typer.BadParameter(
        f"{value!r} is not one of {', '.join(m.value for m in allowed)}", param_hint=option
    )


@keys_cli.command("create")
def create_key(
    scopes: Annotated[
        str, typer.Option("--scopes", help="comma-separated: assign, read, audience, admin")
    ],
    name: Annotated[
        str, typer.Option("--name", help="who holds it (shows in logs and audit rows)")
    ] = "client",
) -> None:
    """Print a new API key once, and the `name:sha256:scopes` entry for SEGMENTS_API_KEYS."""
    from app.auth.keys import Scope, generate_key, key_config_line, parse_key_config

    try:
        wanted = [Scope(s.strip()) for s in scopes.split(",") if s.strip()]
    except ValueError as exc:
        raise typer.BadParameter(
            f"scopes are {', '.join(s.value for s in Scope)}", param_hint="--scopes"
        ) from exc
    if not wanted:
        raise typer.BadParameter("give at least one scope", param_hint="--scopes")
    key = generate_key()
    line = key_config_line(name, key, wanted)
    with _errors_as_messages():
        parse_key_config(line)  # a bad --name fails here, before anything is shown
    err.print("[bold]The key, shown once: give it to the client and do not store it here.[/bold]")
    print(key)
    err.print("Add this entry to SEGMENTS_API_KEYS (or SEGMENTS_API_KEYS_FILE), one per line:")
    print(line)


@contextmanager
def _errors_as_messages() -> Iterator[None]:
    """Expected failures (bad files, bad artifacts, bad options) become one red line and exit 2."""
    from app.scoring.artifact import ArtifactError
    from app.scoring.offline import OfflineInputError
    from app.training.tables import TableError

    try:
        yield
    except (ArtifactError, TableError, OfflineInputError, ValueError) as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc


def _report(path: Path) -> None:
    from app.scoring.artifact import load_artifact

    manifest = load_artifact(path).manifest
    err.print(
        f"wrote {path} (k={len(manifest.segments)}, silhouette {manifest.quality.silhouette})"
    )
    for segment in sorted(manifest.segments, key=lambda s: s.id):
        err.print(f"  {segment.id} {segment.key:<22} {segment.share:6.1%}  {segment.name}")
    if manifest.lineage is not None:  # retrained with --previous: which segments it kept
        from app.training.identity import describe_lineage

        err.print(describe_lineage(manifest))
    print(manifest.version)


def main() -> None:
    cli()
