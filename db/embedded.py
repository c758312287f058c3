"""Embedded PostgreSQL (the ``pgserver`` package) for ``realtime serve`` without ``DATABASE_URL``.

The data lives in ``./.data/pgdata`` and survives restarts. The server listens on a Unix
socket only (no TCP port), with trust authentication for local connections. Several
processes (``--workers``) share one server; the last one to exit stops it.

As root, PostgreSQL refuses to run, so pgserver runs it as the system user ``pgserver``
(created with ``useradd`` if missing) and gives "others" read and traverse permission on
the parent directories of the data directory. We say so in the log before it happens.
"""

from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path

import structlog

from db.errors import EmbeddedDatabaseError

log = structlog.get_logger("db")
DATA_DIR = Path(".data")
ROOT_USER = "pgserver"


def start_embedded(data_dir: Path = DATA_DIR) -> str:
    """Start (or join) the embedded PostgreSQL; returns its URL.

    Blocking (``initdb`` on first start takes about a second): call it in a thread.

    Raises:
        EmbeddedDatabaseError: it cannot start; the message says to set ``DATABASE_URL``.
    """
    pgdata = (data_dir / "pgdata").resolve()
    if os.name != "posix":
        raise _error("the embedded PostgreSQL needs Linux or macOS")
    if os.geteuid() == 0:
        _check_root()
    try:
        pgdata.parent.mkdir(parents=True, exist_ok=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # platformdirs/psutil noise on some systems
            from pgserver.postgres_server import get_server

            server = get_server(pgdata, cleanup_mode="stop")
        url: str = server.get_uri()
    except EmbeddedDatabaseError:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure of a bundled binary becomes one clear message
        raise _error(f"{type(exc).__name__}: {exc}") from None
    log.info("embedded_database_started", data=str(pgdata), url=url, hint="set DATABASE_URL to use your own PostgreSQL")
    return url


def _check_root() -> None:
    log.warning(
        "embedded_database_as_root",
        user=ROOT_USER,
        effect=f"PostgreSQL refuses to run as root: it runs as the system user {ROOT_USER!r} (created if missing), "
        "and the parent directories of ./.data become readable and traversable by others",
        hint="run as a normal user, or set DATABASE_URL",
    )
    import pwd

    try:
        pwd.getpwnam(ROOT_USER)
    except KeyError:
        if shutil.which("useradd") is None:
            raise _error(f"running as root needs the system user {ROOT_USER!r} and there is no useradd") from None


def _error(reason: str) -> EmbeddedDatabaseError:
    return EmbeddedDatabaseError(
        f"DATABASE_URL is not set and the embedded PostgreSQL could not start ({reason}). "
        "Set DATABASE_URL=postgresql://user:password@host:5432/dbname to use your PostgreSQL, "
        "or DATABASE_URL=none to run without a database."
    )
