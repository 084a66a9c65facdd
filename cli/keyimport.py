"""`maas key import users.csv --team T --out keys.csv`: keys for many users, resumable.

Each key is appended to the out file (0600, flushed to disk) as soon as the API made it, and a
run skips the users already in it, so running the same command again after an interruption
goes on where it stopped. What is left is the moment between the API making a key and its line
reaching the file: before each request the user is noted in `<out>.progress` with the server's
clock (its Date header), and a run that finds such a note without a line deletes the key the
API made for that user since then, whose secret nobody saw, before making a new one. So each
user ends up with exactly one key from the import, however often it was cut off.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import stat
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from email.utils import parsedate_to_datetime
from enum import Enum
from pathlib import Path
from typing import IO, Annotated, Any

import typer

from cli import output
from cli.client import Api
from cli.config import FILE_MODE
from cli.exitcodes import CliError, ExitCode
from cli.session import session

COLUMNS = ("user_id", "user_email", "alias", "models", "expires_in")
OUT_FIELDS = ("user_id", "secret_name", "api_key")
# Errors that concern one row (its email, models, a cap): the others are still made. Any other
# (signed out, forbidden, the server gone) stops the run, to be resumed.
_ROW_ERRORS = (ExitCode.API_ERROR, ExitCode.CONFLICT)


class OutFormat(str, Enum):
    csv = "csv"
    jsonl = "jsonl"


@dataclass(frozen=True)
class Row:
    number: int
    user_id: str
    body: dict[str, Any]


def read_rows(path: Path) -> list[Row]:
    try:
        text = path.read_text(encoding="utf-8-sig")  # a spreadsheet's BOM is not part of the first column's name
    except (OSError, UnicodeDecodeError) as exc:
        raise CliError(f"cannot read {path}: {exc}", ExitCode.USAGE) from None
    reader = csv.DictReader(io.StringIO(text))
    header = [name.strip() for name in reader.fieldnames or []]
    if "user_id" not in header:
        raise CliError(f"{path} has no user_id column", ExitCode.USAGE,
                       hint=f"its first line names the columns: {', '.join(COLUMNS)} (all but user_id optional)")
    unknown = [name for name in header if name not in COLUMNS]
    if unknown:
        raise CliError(f"{path} has unknown column(s) {', '.join(unknown)}", ExitCode.USAGE,
                       hint=f"the columns are {', '.join(COLUMNS)}")
    rows: list[Row] = []
    seen: dict[str, int] = {}
    for number, raw in enumerate(reader, start=2):
        values = {(name or "").strip(): (value or "").strip() for name, value in raw.items() if isinstance(value, str)}
        if not any(values.values()):
            continue
        user_id = values.get("user_id", "")
        if not user_id:
            raise CliError(f"{path} line {number} has no user_id", ExitCode.USAGE)
        if user_id in seen:
            raise CliError(f"{path} names {user_id} twice (lines {seen[user_id]} and {number})", ExitCode.USAGE,
                           hint="an import makes one key per user")
        seen[user_id] = number
        body: dict[str, Any] = {"user_id": user_id}
        for field in ("user_email", "alias", "expires_in"):
            if values.get(field):
                body[field] = values[field]
        if values.get("models"):
            body["models"] = [model for model in re.split(r"[;\s]+", values["models"]) if model]
        rows.append(Row(number, user_id, body))
    return rows


def _format_of(path: Path | None, chosen: OutFormat | None) -> OutFormat:
    if chosen is not None:
        return chosen
    return OutFormat.jsonl if path is not None and path.suffix.lower() in (".jsonl", ".ndjson", ".json") else OutFormat.csv


def _done(path: Path, fmt: OutFormat) -> dict[str, str]:
    """user_id -> secret_name of the keys an earlier run wrote to the out file."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    found: dict[str, str] = {}
    try:
        if fmt is OutFormat.jsonl:
            records: Iterable[dict[str, Any]] = (json.loads(line) for line in text.splitlines() if line.strip())
        else:
            records = csv.DictReader(io.StringIO(text))
        for record in records:
            found[str(record["user_id"])] = str(record["secret_name"])
    except (ValueError, KeyError, TypeError):
        raise CliError(f"{path} exists and is not a {fmt.value} file of keys an import wrote", ExitCode.USAGE,
                       hint="give another --out, or --format to read it as it was written") from None
    return found


class _Appender:
    """Lines appended to a 0600 file, each on disk before the next key is asked for."""

    def __init__(self, path: Path) -> None:
        self.path = path
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, FILE_MODE)
        if stat.S_IMODE(os.fstat(fd).st_mode) & 0o077:
            os.fchmod(fd, FILE_MODE)  # an existing file made looser: it holds keys
        self.file: IO[str] = os.fdopen(fd, "a", encoding="utf-8", newline="")
        self.empty = os.fstat(fd).st_size == 0

    def write(self, text: str) -> None:
        self.file.write(text)
        self.file.flush()
        os.fsync(self.file.fileno())
        self.empty = False

    def close(self) -> None:
        self.file.close()


def _line(fmt: OutFormat, record: dict[str, str], *, header: bool) -> str:
    if fmt is OutFormat.jsonl:
        return json.dumps(record) + "\n"
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=OUT_FIELDS, lineterminator="\n")
    if header:
        writer.writeheader()
    writer.writerow(record)
    return buffer.getvalue()


def _progress_notes(path: Path) -> dict[str, str]:
    """user_id -> server time before its request, for requests not known to have settled."""
    pending: dict[str, str] = {}
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return pending
    for line in lines:
        try:
            note = json.loads(line)
        except ValueError:
            continue  # a line cut off by the interruption: its request was never sent
        if "pending" in note:
            pending[note["pending"]] = note.get("since", "")
        elif "settled" in note:
            pending.pop(note["settled"], None)
    return pending


def _server_time(api: Api) -> str:
    try:
        return parsedate_to_datetime(api.last_date or "").isoformat()
    except (TypeError, ValueError):
        return ""


def _orphans(api: Api, team_id: str, user_id: str, since: str, saved: set[str]) -> list[str]:
    """Keys made for `user_id` in the team at or after `since` whose line never reached the file."""
    try:
        start = datetime.fromisoformat(since)
    except ValueError:
        return []
    found = []
    for page in api.pages(f"/users/{user_id}/keys", {"limit": 1000}):
        for key in page.get("keys", []):
            try:
                created = datetime.fromisoformat(key.get("created_at", ""))
            except ValueError:
                continue
            if key.get("team_id") == team_id and created >= start and key.get("secret_name") not in saved:
                found.append(key["secret_name"])
    return found


def import_keys(
    ctx: typer.Context,
    csv_file: Annotated[Path, typer.Argument(metavar="USERS.CSV", exists=True, dir_okay=False, readable=True,
                                             help="Columns: user_id, and optionally user_email, alias, models (space- or ;-separated), expires_in.")],
    team_id: Annotated[str, typer.Option("--team", "-t", help="The team the keys are made in.")],
    out: Annotated[Path | None, typer.Option("--out", metavar="FILE", dir_okay=False,
                                             help="Where the keys go (created 0600): user_id, secret_name, api_key. Also how a rerun resumes.")] = None,
    fmt: Annotated[OutFormat | None, typer.Option("--format", help="csv or jsonl (default: by --out's suffix, .jsonl for JSON lines, else csv).")] = None,
    show: Annotated[bool, typer.Option("--show", help="Also print the keys on stdout (they are not, otherwise).")] = False,
) -> None:
    """Issue a key to every user in a CSV file, with a progress bar; the keys go to --out only.

    Running it again after an interruption resumes: users already in --out are skipped, and no
    user gets two keys.

    Examples:
      maas key import users.csv --team research --out research-keys.csv
      maas key import users.csv --team research --out research-keys.jsonl
    """
    rows = read_rows(csv_file)
    if out is None and not show:
        raise CliError("the keys would be shown nowhere", ExitCode.USAGE,
                       hint="give --out FILE (it also lets a rerun resume), or --show to print them")
    out_format = _format_of(out, fmt)
    done = _done(out, out_format) if out is not None else {}
    progress_path = out.with_name(out.name + ".progress") if out is not None else None
    todo = [row for row in rows if row.user_id not in done]
    made: list[str] = []
    failures: list[str] = []
    with session(ctx).api() as api:
        api.get(f"/teams/{team_id}")  # a 404 before any file is made; and the server's clock
        keys_file = _Appender(out) if out is not None else None
        progress = _Appender(progress_path) if progress_path is not None else None
        try:
            if progress_path is not None:
                for user_id, since in _progress_notes(progress_path).items():
                    if user_id in done:
                        continue
                    for orphan in _orphans(api, team_id, user_id, since, set(done.values())):
                        api.call("DELETE", f"/keys/{orphan}")
                        output.note(f"deleted {orphan}: made for {user_id} as an earlier run was cut off, "
                                    "before its key was saved; a new one is made")
            # Here, not at the top: every maas start (a Tab completion too) imports this module.
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            console = output.stderr()
            bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                           console=console, disable=not console.is_terminal)
            with bar:
                task = bar.add_task(f"keys for {team_id}", total=len(rows), completed=len(rows) - len(todo))
                for row in todo:
                    if progress is not None:
                        progress.write(json.dumps({"pending": row.user_id, "since": _server_time(api)}) + "\n")
                    try:
                        created = api.call("POST", f"/teams/{team_id}/keys", json=row.body)
                    except CliError as error:
                        if error.code not in _ROW_ERRORS:
                            raise
                        failures.append(f"line {row.number} ({row.user_id}): {error.line()}")
                        if progress is not None:
                            progress.write(json.dumps({"settled": row.user_id}) + "\n")
                        bar.advance(task)
                        continue
                    record = {"user_id": row.user_id, "secret_name": created["secret_name"], "api_key": created["api_key"]}
                    if keys_file is not None:
                        keys_file.write(_line(out_format, record, header=keys_file.empty))
                    if show:
                        sys.stdout.write(_line(out_format, record, header=not made))
                        sys.stdout.flush()
                    made.append(row.user_id)
                    bar.advance(task)
        except (KeyboardInterrupt, CliError):
            if out is not None:
                output.note(f"stopped after {len(made)} new key(s), each saved in {out}: "
                            "run the same command again to go on")
            raise
        finally:
            for appender in (keys_file, progress):
                if appender is not None:
                    appender.close()
    if progress_path is not None and not failures:
        progress_path.unlink(missing_ok=True)
    skipped = len(rows) - len(todo)
    where = f", saved in {out}" if out is not None else ""
    output.note(f"made {len(made)} key(s) in {team_id}{where}" + (f"; {skipped} already in {out}" if skipped else ""))
    for failure in failures:
        output.note(f"not made: {failure}")
    if failures:
        raise CliError(f"{len(failures)} of {len(rows)} key(s) not made", ExitCode.API_ERROR,
                       hint="fix those lines and run the same command again: the others are kept")
