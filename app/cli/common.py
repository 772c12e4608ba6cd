"""What every `segments` command shares: reading the settings, reaching the database (the
configured one, or the embedded PostgreSQL), and expected failures as one red line and exit 2."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn, TypeVar

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from sqlalchemy.exc import OperationalError

from app.errors import AppError, StoreFailed, StoreReason
from app.settings import ConfigurationError, Settings

if TYPE_CHECKING:
    from sqlalchemy import Engine

err = Console(stderr=True)
out = Console()


def load_settings() -> Settings:
    """The settings from the environment; an invalid value stops the command, naming every
    variable that is wrong, never with a traceback."""
    try:
        return Settings()
    except ValidationError as exc:
        fail(setting_problems(exc))


def setting_problems(invalid: ValidationError) -> list[str]:
    """Each invalid setting, named by its environment variable."""
    return [f"{_variable(error['loc'])}: {error['msg']}" for error in invalid.errors()]


def _variable(loc: tuple[int | str, ...]) -> str:
    name = str(loc[0]) if loc else "settings"
    return (
        "DATABASE_URL" if name in {"database_url", "DATABASE_URL"} else f"SEGMENTS_{name.upper()}"
    )


def fail(problems: list[str]) -> NoReturn:
    """Print the problems (one line each) and stop with exit status 2."""
    if len(problems) == 1:
        err.print(f"[red]error:[/red] {problems[0]}", highlight=False, soft_wrap=True)
    else:
        err.print(f"[red]error:[/red] {len(problems)} problems:", highlight=False)
        for problem in problems:
            err.print(f"  - {problem}", highlight=False)
    raise typer.Exit(2)


@contextmanager
def database(
    settings: Settings, *, announce: bool = False, check: bool = True
) -> Iterator[Settings]:
    """The settings on a database for the block: DATABASE_URL's, or else the embedded
    PostgreSQL in SEGMENTS_EMBEDDED_DIR, started for the block unless it runs already (it
    fails with EmbeddedError, which `errors_as_messages` reports). With `check`, DATABASE_URL's
    database is reached once first: one that does not exist or does not answer stops the
    command with what to do (ConfigurationError), before any work."""
    if settings.database_url is not None:
        if check:
            _reach(settings)
        yield settings
        return
    from app.store.embedded import embedded_database

    with embedded_database(settings.embedded_dir) as server:
        if announce:
            state = "started" if server.started else "already running"
            err.print(
                f"embedded PostgreSQL {server.server_version} ({state}): data in "
                f"{server.folder}, reached through its Unix socket only; it stops when the "
                "last command using it ends. Set DATABASE_URL to use another server.",
                highlight=False,
            )
        yield settings.with_database(server.url)


def _reach(settings: Settings) -> None:
    from app.startup import connection_problem
    from app.store.engine import make_engine, ping

    engine = make_engine(settings.model_copy(update={"db_pool_size": 1}))
    try:
        with engine.connect() as conn:
            ping(conn)
    except OperationalError as exc:
        raise ConfigurationError([connection_problem(exc, settings.database)]) from exc
    finally:
        engine.dispose()


def check_output(path: Path, option: str, suffixes: tuple[str, ...] | None = None) -> None:
    """Stop, before any work, when `path` cannot be written as asked: its folder is missing,
    or (with `suffixes`) its name ends in none of them, so the format would be a guess."""
    folder = path.parent
    if folder.exists() and not folder.is_dir():
        fail([f"{option} {path}: {folder} is a file, not a folder; write elsewhere"])
    if not folder.exists():
        fail(
            [f"{option} {path}: the folder {folder} does not exist; create it (mkdir -p {folder})"]
        )
    if suffixes is not None and not path.name.lower().endswith(suffixes):
        fail(
            [
                f"{option} {path}: unknown file type {''.join(path.suffixes) or '(no suffix)'}; "
                f"end its name in {', '.join(suffixes[:-1])} or {suffixes[-1]}"
            ]
        )


@contextmanager
def errors_as_messages() -> Iterator[None]:
    """Expected failures (bad files, bad artifacts, bad options, refusals) become one red line
    and exit 2."""
    from app.datafiles import TableError
    from app.scoring.artifact import ArtifactError
    from app.scoring.offline import OfflineInputError
    from app.store.embedded import EmbeddedError
    from app.store.migrate import OldMigrationChain

    try:
        yield
    except ConfigurationError as exc:
        fail(exc.problems)
    except StoreFailed as exc:
        # an outage, said the way HTTP clients hear it; a command line also gets the server's
        # words for why it is unavailable (a timeout, a lock or a busy pool say it already)
        cause = exc.__cause__
        if exc.reason is StoreReason.UNAVAILABLE and isinstance(cause, OperationalError):
            fail([_database_failure(cause)])
        fail([str(exc)])
    except OperationalError as exc:
        fail([_database_failure(exc)])
    except (
        AppError,
        ArtifactError,
        TableError,
        OfflineInputError,
        OldMigrationChain,
        EmbeddedError,
        ValueError,
    ) as exc:
        fail([str(exc)])


def _database_failure(failure: OperationalError) -> str:
    # the server's own words (which name host, database and user, never a password)
    said = str(failure.orig).strip().splitlines()[0] if failure.orig else type(failure).__name__
    return f"the database cannot be used: {said}"


Choice = TypeVar("Choice", bound=StrEnum)


def choice(kind: type[Choice], value: str, option: str, exclude: Choice | None = None) -> Choice:
    """`value` as a member of the enumeration, or a usage error naming the option."""
    allowed = [member for member in kind if member is not exclude]
    for member in allowed:
        if member.value == value.lower():
            return member
    raise typer.BadParameter(
        f"{value!r} is not one of {', '.join(m.value for m in allowed)}", param_hint=option
    )


def progress_bar(label: str) -> Progress:
    columns = [TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    return Progress(*columns, console=err, transient=True)


@contextmanager
def engine_of(settings: Settings) -> Iterator[Engine]:
    from app.store.engine import make_engine

    engine = make_engine(settings)
    try:
        yield engine
    finally:
        engine.dispose()


# The columns of a transactions file: `segments train transactions` and `segments ingest
# transactions` read the same files the same way (app.training.rfm.TransactionColumns).
CustomerColumn = Annotated[str, typer.Option("--customer", help="customer id column")]
TimeColumn = Annotated[
    str, typer.Option("--time", help="transaction timestamp column (no zone: UTC)")
]
AmountColumn = Annotated[
    str | None, typer.Option("--amount", help="spend column (or --quantity and --price)")
]
QuantityColumn = Annotated[str | None, typer.Option("--quantity")]
PriceColumn = Annotated[str | None, typer.Option("--price")]
InvoiceColumn = Annotated[
    str | None, typer.Option("--invoice", help="order id column; 'C…' ids are cancellations")
]
