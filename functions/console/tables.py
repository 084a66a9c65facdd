"""Tables that page and sort on the server: the browser gets one page of rows, never a whole list.

Two kinds, by what the API can do:
- a list the console holds whole (a usage breakdown, or an API listing of at most `WHOLE` items,
  read in one API page): sorted here by any column, either way, and cut into pages;
- a longer API listing (100,000 keys): the API pages it in its one order (by id, ascending) and
  has no other, so the table shows the API's pages in that order, one at a time by its cursor,
  and says why its other columns do not sort.

Each table's state lives in the page's query string under its own prefix (`keys_sort`,
`keys_order`, `keys_page`, `keys_cursor`), so one page can hold several tables, and every link
keeps the state of the others.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlencode

from functions.console.api import Answer

Order = Literal["asc", "desc"]
PAGE_SIZE = 25
# The API's largest page (shared.schemas.PageQuery): a list this long or shorter is read whole.
WHOLE = 1000


@dataclass(frozen=True)
class Column:
    key: str
    label: str
    numeric: bool = False
    sortable: bool = True


@dataclass
class Table:
    name: str
    columns: tuple[Column, ...]
    rows: list[dict[str, Any]]
    sort: str
    order: Order
    base: str  # the page's path
    args: dict[str, str]  # the page's query, without this table's state
    total: int | None = None
    page: int = 1
    pages: int = 1
    whole: bool = True
    cursor: str | None = None
    next_cursor: str | None = None
    note: str | None = None
    page_size: int = PAGE_SIZE
    extra: dict[str, Any] = field(default_factory=dict)  # what the API answered besides the rows

    def _href(self, **state: str | int | None) -> str:
        given = {**self.args, **{f"{self.name}_{k}": v for k, v in state.items()}}
        query = urlencode({k: str(v) for k, v in given.items() if v not in (None, "")})
        return f"{self.base}?{query}" if query else self.base

    def sortable(self, column: Column) -> bool:
        return column.sortable and self.whole

    def aria_sort(self, column: Column) -> str | None:
        if column.key != self.sort:
            return None
        return "ascending" if self.order == "asc" else "descending"

    def sort_href(self, column: Column) -> str:
        """Sorted by this column: the other way round if it is the sort already; numbers first
        largest, words first A."""
        if column.key == self.sort:
            order: Order = "desc" if self.order == "asc" else "asc"
        else:
            order = "desc" if column.numeric else "asc"
        return self._href(sort=column.key, order=order)

    def sort_words(self, column: Column) -> str:
        """What following the header's link does, said after the column's name (for its
        accessible name; the arrow beside it is for the eyes only)."""
        if column.key == self.sort:
            now, then = ("ascending", "descending") if self.order == "asc" else ("descending", "ascending")
            return f" (sorted {now}; sort {then})"
        return f" (sort {'descending' if column.numeric else 'ascending'})"

    def page_href(self, number: int) -> str:
        return self._href(sort=self.sort, order=self.order, page=number if number > 1 else None)

    @property
    def next_href(self) -> str | None:
        if self.whole:
            return self.page_href(self.page + 1) if self.page < self.pages else None
        return self._href(cursor=self.next_cursor) if self.next_cursor else None

    @property
    def previous_href(self) -> str | None:
        return self.page_href(self.page - 1) if self.whole and self.page > 1 else None

    @property
    def first_href(self) -> str | None:
        if self.whole:
            return self.page_href(1) if self.page > 2 else None
        return self._href() if self.cursor else None

    @property
    def shown(self) -> str:
        """Which rows this page holds, in words."""
        if not self.rows:
            return "none"
        if self.whole:
            first = (self.page - 1) * self.page_size + 1
            return f"{first:,}–{first + len(self.rows) - 1:,} of {self.total or 0:,}"
        return f"{len(self.rows):,} of {self.total:,}" if self.total is not None else f"{len(self.rows):,}"


def _state(args: Mapping[str, str], name: str) -> tuple[dict[str, str], str | None, str | None, int, str | None]:
    """The page's other args, and this table's sort, order, page and cursor."""
    prefix = f"{name}_"
    others = {k: v for k, v in args.items() if not k.startswith(prefix)}
    try:
        number = max(1, int(args.get(f"{prefix}page", "1")))
    except ValueError:
        number = 1
    return (others, args.get(f"{prefix}sort"), args.get(f"{prefix}order"), number,
            args.get(f"{prefix}cursor") or None)


def _sort_key(column: Column) -> Callable[[Mapping[str, Any]], Any]:
    def key(row: Mapping[str, Any]) -> Any:
        value = row.get(column.key)
        return value.casefold() if isinstance(value, str) and not column.numeric else value
    return key


def whole_table(name: str, columns: Sequence[Column], rows: Sequence[Mapping[str, Any]], *, args: Mapping[str, str],
                base: str, default_sort: str, default_order: Order = "asc", page_size: int = PAGE_SIZE,
                note: str | None = None, extra: Mapping[str, Any] | None = None) -> Table:
    """A table of rows the console holds whole: sorted and cut into pages here."""
    others, sort, order, number, _ = _state(args, name)
    by_key = {column.key: column for column in columns if column.sortable}
    if sort not in by_key:
        sort, order = default_sort, default_order
    chosen: Order = "desc" if order == "desc" else "asc"
    column = by_key[sort]
    # Blanks (no value) last either way; then the column, then the first column to break ties.
    present = [dict(row) for row in rows if row.get(sort) not in (None, "")]
    blank = [dict(row) for row in rows if row.get(sort) in (None, "")]
    present.sort(key=_sort_key(columns[0]))
    present.sort(key=_sort_key(column), reverse=chosen == "desc")
    ordered = present + blank
    pages = max(1, -(-len(ordered) // page_size))
    number = min(number, pages)
    cut = ordered[(number - 1) * page_size: number * page_size]
    return Table(name=name, columns=tuple(columns), rows=cut, sort=sort, order=chosen, base=base, args=others,
                 total=len(ordered), page=number, pages=pages, note=note, page_size=page_size,
                 extra=dict(extra or {}))


def api_table(name: str, columns: Sequence[Column], fetch: Callable[[int, str | None], Answer], *, items: str,
              total: str, id_column: str, args: Mapping[str, str], base: str, noun: str,
              default_sort: str | None = None, default_order: Order = "asc") -> Table | Answer:
    """A table of an API listing paged by cursor. `fetch(limit, cursor)` calls the API; a refusal
    is given back as it is, for the page to show. A list of at most WHOLE items is read in one API page and sorted here (whole_table);
    a longer one is shown a page at a time in the API's order, by `id_column` ascending."""
    others, _, _, _, cursor = _state(args, name)
    if cursor is None:
        first = fetch(PAGE_SIZE, None)
        if not first.ok:
            return first
        body = first.body
        count = int(body.get(total, 0))
        if body.get("next_cursor") is None:
            return whole_table(name, columns, body[items], args=args, base=base, default_sort=default_sort or id_column,
                               default_order=default_order, extra=body)
        if count <= WHOLE:
            every = fetch(WHOLE, None)
            if not every.ok:
                return every
            if every.body.get("next_cursor") is None:  # else it grew past WHOLE since: paged below
                return whole_table(name, columns, every.body[items], args=args, base=base,
                                   default_sort=default_sort or id_column, default_order=default_order,
                                   extra=every.body)
    else:
        first = fetch(PAGE_SIZE, cursor)
        if not first.ok:
            return first
        body = first.body
        count = int(body.get(total, 0))
    # Said on every page of such a list, not only when another sort was asked for: its headers
    # are no links, and the reason should be on the page.
    label = next((c.label for c in columns if c.key == id_column), id_column)
    note = (f"{count:,} {noun}: more than the {WHOLE:,} the console sorts itself, so they are in the API's order, "
            f"by {label.lower()}, {PAGE_SIZE} a page (the API sorts them no other way).")
    return Table(name=name, columns=tuple(columns), rows=list(body[items]), sort=id_column, order="asc", base=base,
                 args=others, total=count, whole=False, cursor=cursor, next_cursor=body.get("next_cursor"),
                 note=note, extra=body)
