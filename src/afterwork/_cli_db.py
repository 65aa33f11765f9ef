"""``afterwork db migrate`` and ``afterwork db check``: the PostgreSQL store's schema.

Stores migrate themselves on open. Teams that run migrations as a deploy step run
``afterwork db migrate`` there and open the store with ``?migrate=false``; ``afterwork db
check`` tells a deploy whether the schema is at this version (exit 0), needs migrating
(exit 1), or was migrated by a newer afterwork (exit 2).
"""

from __future__ import annotations

import os

import typer

from ._cli_jobs import UrlOption

__all__ = ("db_app",)

db_app: typer.Typer = typer.Typer(
    name="db",
    help="Migrate or check the PostgreSQL store's schema (a deploy step).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _backend(url: str | None) -> object:
    from .backends import from_url
    from .exceptions import AfterworkError

    url = url or os.environ.get("AFTERWORK_URL")
    if not url:
        typer.echo("error: pass --url or set AFTERWORK_URL (a postgresql:// URL)", err=True)
        raise typer.Exit(2)
    try:
        backend = from_url(url)
    except AfterworkError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    from .backends.postgres import PostgresBackend

    if not isinstance(backend, PostgresBackend):
        typer.echo(
            "error: `afterwork db` manages PostgreSQL stores; the other stores migrate on open",
            err=True,
        )
        raise typer.Exit(2)
    return backend


@db_app.command()
def migrate(url: UrlOption = None) -> None:
    """Create the store's tables, or migrate them to this version (idempotent)."""
    import asyncio  # lazily: `afterwork --help` need not load it

    from .backends.postgres import PostgresBackend
    from .exceptions import AfterworkError, SchemaVersionError

    backend = _backend(url)
    assert isinstance(backend, PostgresBackend)
    try:
        before, after = asyncio.run(backend.migrate())
    except SchemaVersionError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    except AfterworkError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    if before == after:
        typer.echo(f"schema {backend.schema!r}: at version {after}, nothing to do")
    else:
        typer.echo(f"schema {backend.schema!r}: migrated from version {before} to {after}")


@db_app.command()
def check(url: UrlOption = None) -> None:
    """Exit 0 if the schema is at this version, 1 if it needs migrating, 2 if newer."""
    import asyncio  # lazily: `afterwork --help` need not load it

    from .backends._pg_schema import SCHEMA_VERSION
    from .backends.postgres import PostgresBackend
    from .exceptions import AfterworkError, SchemaVersionError

    backend = _backend(url)
    assert isinstance(backend, PostgresBackend)
    try:
        version = asyncio.run(backend.schema_version())
    except SchemaVersionError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    except AfterworkError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    if version == SCHEMA_VERSION:
        typer.echo(f"schema {backend.schema!r}: at version {version}")
        return
    have = "no afterwork tables" if version is None else f"version {version}"
    typer.echo(
        f"schema {backend.schema!r}: {have}, needs version {SCHEMA_VERSION}"
        " (run `afterwork db migrate`)"
    )
    raise typer.Exit(1)
