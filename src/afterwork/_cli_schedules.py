"""How ``afterwork schedules`` prints: a table for people, ``--json`` for scripts."""

from __future__ import annotations

from typing import Any

import typer

from ._cli_text import safe_json, safe_line

__all__ = ("print_schedules",)


def print_schedules(rows: list[dict[str, Any]], *, as_json: bool) -> None:
    if as_json:
        typer.echo(safe_json(rows))
        return
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(title=f"{len(rows)} schedule(s)")
    for column in ("name", "task", "schedule", "tz", "misfire", "next run (UTC)", "last run"):
        table.add_column(column, overflow="fold")
    for row in rows:
        cells = [
            row["name"],
            row["task"],
            f"{row['kind']} {row['spec']}",
            row["tz"],
            row["misfire"],
            row["next_run_at"] or "never",
            row["last_run_at"] or "-",
        ]
        # Text, never markup: a name like "[red]x" is shown as it is.
        table.add_row(*(Text(safe_line(cell)) for cell in cells))
    Console(highlight=False).print(table)
