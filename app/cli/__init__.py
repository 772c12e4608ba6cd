"""The `segments` command: train, serve, migrate, ingest, rescore, score, drift, export, models, keys.

Each command parses its options, calls what app/ does (the same operations the HTTP routes
call), and prints. Expected failures are one red line (or a short list) and exit status 2; a
gate that says no (`models activate --min-agreement`, `models compare --min-agreement`) exits
with 1, as a failed check does."""

from __future__ import annotations

import typer

from app.cli.drift import drift
from app.cli.export import export_audience
from app.cli.ingest import ingest_cli
from app.cli.keys import keys_cli
from app.cli.models import models_cli
from app.cli.rescore import rescore
from app.cli.score import score
from app.cli.serve import migrate, serve
from app.cli.train import train_cli

cli = typer.Typer(
    help="Customer segment scoring: train models, serve them, score files.", no_args_is_help=True
)
cli.add_typer(train_cli, name="train")
cli.command()(serve)
cli.command()(migrate)
cli.add_typer(ingest_cli, name="ingest")
cli.command()(rescore)
cli.command()(score)
cli.command()(drift)
cli.command("export")(export_audience)
cli.add_typer(models_cli, name="models")
cli.add_typer(keys_cli, name="keys")


def main() -> None:
    cli()
