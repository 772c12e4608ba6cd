"""`segments keys create`: a new API key, shown once, and the entry to configure."""

from __future__ import annotations

from typing import Annotated

import typer

from app.cli.common import err, errors_as_messages, fail

keys_cli = typer.Typer(help="API keys: make one and the entry to configure.", no_args_is_help=True)


@keys_cli.command("create")
def create_key(
    scopes: Annotated[
        str,
        typer.Option(
            "--scopes", help="comma-separated: assign, read, audience, advertising, admin"
        ),
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
    try:
        line = key_config_line(name, key, wanted)  # a bad --name fails here, before any key shows
    except ValueError as exc:
        fail([f"--name {name!r}: {exc}; e.g. --name crm-sync"])
    with errors_as_messages():
        parse_key_config(line)
    err.print("[bold]The key, shown once: give it to the client and do not store it here.[/bold]")
    print(key)
    err.print("Add this entry to SEGMENTS_API_KEYS (or SEGMENTS_API_KEYS_FILE), one per line:")
    print(line)
