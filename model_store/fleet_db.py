"""The device table: every device's last known record, in ``fleet.sqlite3`` in the store home.

Its own file rather than the registry's, so a controller writing reports every half second never
waits on (or holds up) a registry transaction. WAL mode: ``fleet status`` reads while the
controller writes. One row per device; the record is JSON (:meth:`DeviceRecord.to_json`), with
``online`` and ``last_seen_s`` also as columns for anyone querying the file directly.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from model_store.fleet_records import DeviceRecord
from model_store.home import StoreHome

__all__ = ["FleetDatabase", "fleet_database_path"]

logger = logging.getLogger(__name__)

_SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS devices (
    device_id TEXT PRIMARY KEY,
    online INTEGER NOT NULL,
    last_seen_s REAL NOT NULL,
    record TEXT NOT NULL
)
"""


def fleet_database_path(home: StoreHome) -> Path:
    """Where the controller keeps the device table."""
    return home.root / "fleet.sqlite3"


class FleetDatabase:
    """The device table; ``readonly`` opens an existing file without creating or changing it.

    One connection, usable from any one thread at a time (the owner serialises its calls).
    """

    def __init__(self, path: Path, *, readonly: bool = False) -> None:
        self.path = path
        try:
            if readonly:
                self._db = sqlite3.connect(
                    f"{path.resolve().as_uri()}?mode=ro", uri=True, check_same_thread=False
                )
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                self._db = sqlite3.connect(
                    path, isolation_level=None, timeout=30.0, check_same_thread=False
                )
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=NORMAL")
                self._db.execute(_SCHEMA)
                self._db.execute(f"PRAGMA user_version={_SCHEMA_VERSION}")
            version = int(self._db.execute("PRAGMA user_version").fetchone()[0])
        except sqlite3.Error as error:
            raise OSError(f"device table {path}: {error}") from error
        if version != _SCHEMA_VERSION:
            self._db.close()
            raise OSError(
                f"device table {path} has schema version {version}, expected {_SCHEMA_VERSION}"
            )

    def load(self) -> dict[str, DeviceRecord]:
        """Every device in the table; unreadable rows are logged and skipped."""
        records = {}
        try:
            rows = self._db.execute("SELECT device_id, record FROM devices").fetchall()
        except sqlite3.Error as error:
            raise OSError(f"device table {self.path}: {error}") from error
        for device_id, text in rows:
            try:
                records[device_id] = DeviceRecord.from_json(device_id, text)
            except ValueError as error:
                logger.warning("%s: skipping a row: %s", self.path, error)
        return records

    def save(self, rows: Iterable[tuple[str, bool, float, str]]) -> int:
        """Upsert ``(device_id, online, last_seen_s, record_json)`` rows in one transaction."""
        batch = [(d, int(online), seen, text) for d, online, seen, text in rows]
        if not batch:
            return 0
        try:
            self._write(batch)
        except sqlite3.Error as error:
            raise OSError(f"device table {self.path}: {error}") from error
        return len(batch)

    def _write(self, batch: list[tuple[str, int, float, str]]) -> None:
        with self._transaction():
            self._db.executemany(
                "INSERT INTO devices (device_id, online, last_seen_s, record) VALUES (?, ?, ?, ?)"
                " ON CONFLICT(device_id) DO UPDATE SET online = excluded.online,"
                " last_seen_s = excluded.last_seen_s, record = excluded.record",
                batch,
            )

    def close(self) -> None:
        """Close the connection."""
        self._db.close()

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")
