"""The `segments` command: train, serve, migrate, score, drift, export, models, keys.

Each command parses its options, calls what app/ does (the same operations the HTTP routes
call), and prints; expected failures are one red line and exit status 2."""

from __future__ import annotations

import typer

from app.cli.data import drift, export_audience, score
from app.cli.keys import keys_cli
from app.cli.models import models_cli
from app.cli.serve import migrate, serve
from app.cli.train import train_cli

cli = typer.Typer(
    help="Customer segment scoring: train models, serve them, score files.", no_args_is_help=True
)
cli.add_typer(train_cli, name="train")
cli.command()(serve)
cli.command()(migrate)
cli.command()(score)
cli.command()(drift)
cli.command("export")(export_audience)
cli.add_typer(models_cli, name="models")
cli.add_typer(keys_cli, name="keys")


def main() -> None:
    cli()
