"""The data dir and its files are the owner's only: 0700 and 0600.

The databases hold key hashes, usage and the audit; the data dir also holds the admin key and
the TLS key. SQLite creates a database's -wal and -shm files with the database file's mode, so
a database is created 0600 here before SQLite first opens it, rather than chmod-ed after (its
-wal/-shm would already exist with the umask's mode).

An existing directory is the operator's (MAAS_DATA_DIR may name one shared on purpose, and
chmod-ing, say, /srv as root would lock others out): it is left as it is, with a warning when
others may enter it. The files in it are ours, and are tightened to 0600 when found looser.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

log = logging.getLogger("maas.files")

DIR_MODE = 0o700
FILE_MODE = 0o600
# What SQLite adds beside a database in WAL mode.
SQLITE_COMPANIONS = ("-wal", "-shm", "-journal")

_warned: set[Path] = set()


def private_dir(path: Path) -> Path:
    """`path` as a directory, created 0700 (its missing parents too) when it does not exist."""
    missing = []
    for parent in (path, *path.parents):
        if parent.exists():
            break
        missing.append(parent)
    for directory in reversed(missing):
        try:
            directory.mkdir(mode=DIR_MODE)
        except FileExistsError:
            continue  # made meanwhile by another thread or process: the operator's race, not ours
        os.chmod(directory, DIR_MODE)  # the umask applies to mkdir's mode; the owner needs all of rwx
    if not missing:
        _warn_if_open(path)
    return path


def _warn_if_open(path: Path) -> None:
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except OSError:
        return
    if mode & 0o077 and path not in _warned:
        _warned.add(path)
        log.warning("%s may be entered by other users (mode %s): the files in it are 0600, "
                    "`chmod 700 %s` makes their names private too", path, oct(mode), path)


def private_file(path: Path) -> Path:
    """`path` created empty 0600 if missing, else tightened to 0600; same for a database's
    -wal/-shm/-journal files that exist. Call before sqlite3.connect creates the file."""
    private_dir(path.parent)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, FILE_MODE)
    try:
        if stat.S_IMODE(os.fstat(fd).st_mode) & 0o077:
            os.fchmod(fd, FILE_MODE)
    finally:
        os.close(fd)
    for suffix in SQLITE_COMPANIONS:
        companion = path.with_name(path.name + suffix)
        try:
            if stat.S_IMODE(companion.stat().st_mode) & 0o077:
                os.chmod(companion, FILE_MODE)
        except FileNotFoundError:
            continue
    return path
