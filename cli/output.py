"""What commands print: tables for people, the API's JSON as is for scripts (`--json`, `-o json`,
`-o yaml`), and notes on stderr so that stdout stays parseable."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from enum import Enum
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    # rich and yaml are imported when something is printed: a Tab completion prints through
    # neither, and importing them was a tenth of maas's start.
    from rich.console import Console


class Format(str, Enum):
    table = "table"
    json = "json"
    yaml = "yaml"


OutputOption = Annotated[
    Format, typer.Option("--output", "-o", case_sensitive=False, help="table (for people), json or yaml (the API's answer as is)."),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print the API's JSON answer as is (same as -o json).")]

Columns = Sequence[tuple[str, str]]
"""(header, field of the API's answer) pairs, in order."""


def chosen(output: Format, as_json: bool) -> Format:
    return Format.json if as_json else output


def stdout() -> Console:
    from rich.console import Console

    # No highlighting: ids and numbers are data, and a terminal's colours must not change them.
    console = Console(highlight=False, soft_wrap=False)
    if not console.is_terminal:
        # Piped into grep or a file: whole lines, never folded at an imagined 80 columns.
        console = Console(highlight=False, soft_wrap=False, width=1000)
    return console


def stderr() -> Console:
    from rich.console import Console

    return Console(stderr=True, highlight=False)


def note(message: str) -> None:
    """A line for the person at the terminal, on stderr: never in what a script parses."""
    print(message, file=sys.stderr)


def cell(value: Any) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return ", ".join(cell(item) for item in value) or "-"
    if isinstance(value, dict):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def table(rows: Sequence[dict[str, Any]], columns: Columns, *, title: str | None = None,
          empty: str = "nothing to show") -> None:
    if not rows:
        note(empty)
        return
    from rich.table import Table

    view = Table(title=title, title_justify="left", header_style="bold", box=None, pad_edge=False)
    for header, _ in columns:
        # Fold, never cut: an id shown with an ellipsis cannot be pasted into the next command.
        view.add_column(header, overflow="fold")
    for row in rows:
        view.add_row(*(cell(row.get(name)) for _, name in columns))
    stdout().print(view)


def details(data: dict[str, Any], fields: Columns, *, title: str | None = None) -> None:
    from rich.table import Table

    view = Table(title=title, title_justify="left", show_header=False, box=None, pad_edge=False)
    view.add_column(style="bold")
    view.add_column(overflow="fold")
    for label, name in fields:
        view.add_row(label, cell(data.get(name)))
    stdout().print(view)


def emit(data: Any, fmt: Format, show: Callable[[Any], None]) -> None:
    """`data` (the API's answer) as JSON or YAML as it is, or through `show` as tables."""
    if fmt is Format.json:
        print(json.dumps(data, indent=2, ensure_ascii=False))
    elif fmt is Format.yaml:
        import yaml

        print(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), end="")
    else:
        show(data)


def more(page: dict[str, Any], command: str) -> None:
    """Say there is more, when a page of a listing is not the last."""
    cursor = page.get("next_cursor")
    if cursor:
        note(f"more: add --all, or --cursor {cursor} for the next page ({command})")
