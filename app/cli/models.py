"""`segments models …`: the registry from the command line (DATABASE_URL, or the embedded
PostgreSQL). The operations are app.lifecycle.registry's, the ones the HTTP routes call; this
module parses and prints.

Every command works on a running fleet: workers poll the registry and converge within
SEGMENTS_MODEL_POLL_SECONDS, so nothing needs a restart.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from app.cli.common import (
    check_output,
    database,
    err,
    errors_as_messages,
    load_settings,
    out,
)
from app.datafiles import read_table
from app.lifecycle.compare import (
    DEFAULT_SAMPLE,
    MAX_SAMPLE,
    MIN_SAMPLE,
    Comparison,
    checked_features,
)
from app.lifecycle.registry import AgreementTooLow, ModelRegistry
from app.scoring.artifact import load_artifact
from app.store.engine import make_engine

models_cli = typer.Typer(
    help="The model registry: register, list, compare, shadow, activate, roll back.",
    no_args_is_help=True,
)

MinAgreement = Annotated[
    float | None,
    typer.Option(
        "--min-agreement",
        min=0.0,
        max=1.0,
        help="refuse unless at least this share of stored customers keeps its segment",
    ),
]


@contextmanager
def _registry() -> Iterator[ModelRegistry]:
    with errors_as_messages(), database(load_settings()) as settings:
        engine = make_engine(settings)
        try:
            yield ModelRegistry(engine)
        finally:
            engine.dispose()


@models_cli.command("register")
def register(
    path: Annotated[Path, typer.Argument(help="a model folder written by `segments train`")],
) -> None:
    """Verify a model folder and add it to the registry as a candidate (idempotent)."""
    with _registry() as registry:
        registered = registry.register(load_artifact(path))
    err.print(f"registered {registered.version} ({registered.status})")
    print(registered.version)


@models_cli.command("list")
def list_models() -> None:
    """Every registered version with its status, newest first."""
    with _registry() as registry:
        versions = registry.listed()
    table = Table(title="registered models")
    for column in ("version", "status", "shadow", "segments", "registered", "activated", "retired"):
        table.add_column(column)
    for v in versions:
        table.add_row(
            v.version,
            v.status,
            "yes" if v.shadow else "",
            str(len(v.manifest.segments)),
            f"{v.created_at:%Y-%m-%d %H:%M}",
            f"{v.activated_at:%Y-%m-%d %H:%M}" if v.activated_at else "",
            f"{v.retired_at:%Y-%m-%d %H:%M}" if v.retired_at else "",
        )
    out.print(table)


@models_cli.command("activate")
def activate(
    version: Annotated[str, typer.Argument(help="a registered version")],
    min_agreement: MinAgreement = None,
    sample: Annotated[
        int,
        typer.Option("--sample", min=MIN_SAMPLE, max=MAX_SAMPLE, help="stored customers compared"),
    ] = DEFAULT_SAMPLE,
    allow_schema_change: Annotated[
        bool, typer.Option("--allow-schema-change", help="the new model takes other features")
    ] = False,
) -> None:
    """Make VERSION the active model everywhere (rollback: activate the previous version)."""
    with _registry() as registry:
        try:
            activation = registry.activate(
                version,
                allow_schema_change=allow_schema_change,
                min_agreement=min_agreement,
                sample=sample,
            )
        except AgreementTooLow as refused:  # the gate's figures, then its answer
            print_comparison(refused.comparison)
            err.print(f"[red]not activated:[/red] {refused}", highlight=False)
            raise typer.Exit(1) from refused
    if activation.comparison is not None:
        print_comparison(activation.comparison)
    if activation.lineage_warning is not None:
        err.print(f"[yellow]warning:[/yellow] {activation.lineage_warning}", highlight=False)
    was = f" (was {activation.previous})" if activation.previous else ""
    err.print(f"[green]{version} is active{was}[/green]; workers switch within seconds")


@models_cli.command("rollback")
def rollback() -> None:
    """Activate the version that was active before the current one."""
    with _registry() as registry:
        activation = registry.rollback()
    err.print(
        f"[green]rolled back to {activation.model.version}[/green] (was {activation.previous})"
    )


@models_cli.command("shadow")
def shadow(
    version: Annotated[str | None, typer.Argument(help="a registered candidate")] = None,
    off: Annotated[bool, typer.Option("--off", help="stop shadow scoring")] = False,
) -> None:
    """Score live traffic with VERSION too (after each response), to judge it before activating."""
    if (version is None) == (not off):
        raise typer.BadParameter("give a VERSION, or --off")
    with _registry() as registry:
        registry.set_shadow(None if off else version)
    err.print("shadow scoring off" if off else f"{version} is the shadow model")


@models_cli.command("compare")
def compare_command(
    old: Annotated[str, typer.Argument(help="version, 'active', 'shadow' or a model folder")],
    new: Annotated[str, typer.Argument(help="version, 'active', 'shadow' or a model folder")],
    input_file: Annotated[
        Path | None,
        typer.Option(
            "--input", help="CSV/Parquet with the features (default: the stored customers)"
        ),
    ] = None,
    sample: Annotated[
        int,
        typer.Option("--sample", min=MIN_SAMPLE, max=MAX_SAMPLE, help="stored customers compared"),
    ] = DEFAULT_SAMPLE,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="write the report as JSON")
    ] = None,
    min_agreement: MinAgreement = None,
) -> None:
    """Transition matrix, share moving, adjusted Rand index and profile changes, OLD -> NEW."""
    if json_out is not None:
        check_output(json_out, "--json")
    with _registry() as registry:
        before = registry.resolve(old, folders=True)
        after = registry.resolve(new, folders=True)
        features = None
        if input_file is not None:
            features = checked_features(read_table(input_file), [before, after])
        report = registry.compare(before, after, sample=sample, features=features)
    print_comparison(report)
    if json_out is not None:
        json_out.write_text(json.dumps(report.as_json(), indent=2) + "\n")
        err.print(f"report written to {json_out}")
    if min_agreement is not None and report.agreement < min_agreement:
        err.print(f"[red]agreement {report.agreement:.1%} is below {min_agreement:.1%}[/red]")
        raise typer.Exit(1)


def print_comparison(report: Comparison) -> None:
    out.print(
        f"{report.old_version} -> {report.new_version}: {report.customers} customers, "
        f"{report.moved_share:.1%} would move, agreement {report.agreement:.1%}, "
        f"adjusted Rand index {report.adjusted_rand_index:.3f}"
        + (f" ({report.skipped} skipped: other features)" if report.skipped else "")
    )
    new_keys = sorted({k for row in report.transitions.values() for k in row})
    matrix = Table(title="customers: old segment (rows) -> new segment (columns)")
    matrix.add_column("old \\ new")
    for key in new_keys:
        matrix.add_column(key, justify="right")
    for before, row in report.transitions.items():
        matrix.add_row(before, *(str(row.get(k, "")) for k in new_keys))
    out.print(matrix)
    changes = Table(title="segments")
    for column in ("key", "name", "old customers", "new customers", "stayed", "median changes"):
        changes.add_column(column)
    for s in report.segments:
        medians = ""
        if s.old_medians and s.new_medians:
            medians = ", ".join(
                f"{n} {s.old_medians[n]:g}->{s.new_medians[n]:g}"
                for n in s.new_medians
                if n in s.old_medians
            )
        name = s.new_name or f"{s.old_name} (vanished)"
        if s.old_name is None:
            name += " (new)"
        changes.add_row(
            s.key, name, str(s.old_customers), str(s.new_customers), str(s.stayed), medians
        )
    out.print(changes)
