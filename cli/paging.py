"""The paging flags every listing shares: the API's `limit` and `cursor`, and --all to follow
`next_cursor` to the last page."""

from __future__ import annotations

from typing import Annotated

import typer

LimitOption = Annotated[int | None, typer.Option("--limit", min=1, help="Items per page (the API's default: 100).")]
CursorOption = Annotated[str | None, typer.Option("--cursor", help="Start after this next_cursor of an earlier page.")]
AllOption = Annotated[bool, typer.Option("--all", help="Every page, following next_cursor to the last.")]
