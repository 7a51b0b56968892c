"""Messages waiting for the broker, kept in a SQLite file so none is lost offline or on restart.

One table of ``(seq, topic, payload)`` in write-ahead-log mode, every change one transaction
with ``synchronous=FULL``: a ``kill -9`` or a power cut leaves the file consistent with the last
committed call. ``seq`` is never reused (``AUTOINCREMENT``), so a late :meth:`Outbox.ack` can
never remove a newer message. A second table keeps the count of messages dropped while full.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

__all__ = ["Outbox", "OutboxItem"]

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS counters (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
INSERT OR IGNORE INTO counters (name, value) VALUES ('dropped', 0);
"""


@dataclass(frozen=True, slots=True)
class OutboxItem:
    """One message waiting: its sequence number (ack it with this), topic and payload."""

    seq: int
    topic: str
    payload: bytes


class Outbox:
    """Messages waiting for the broker, kept on disk so nothing is lost while offline or across
    a restart.

    Holds at most ``max_items``; past that :meth:`put` drops the oldest and counts it in
    :attr:`dropped` (persisted). Thread-safe: put from the event loop, ack from the MQTT
    client's network thread. A file that is not a readable SQLite database is moved aside
    (``<name>.damaged-<unix time>``) with a warning and a new outbox starts.
    """

    def __init__(self, path: Path, *, max_items: int = 10_000) -> None:
        if max_items < 1:
            raise ValueError(f"max_items must be 1 or more, got {max_items}")
        self.path = path
        self.max_items = max_items
        self._lock = threading.Lock()
        self._full_reported = False
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db: sqlite3.Connection | None = _open(path)
        except sqlite3.DatabaseError as exc:
            aside = path.with_name(f"{path.name}.damaged-{int(time.time())}")
            log.warning(
                "outbox %s is unreadable (%s); moved to %s, starting empty", path, exc, aside
            )
            for suffix in ("", "-wal", "-shm"):  # the log files belong to the damaged one
                with contextlib.suppress(FileNotFoundError):
                    path.with_name(path.name + suffix).rename(aside.with_name(aside.name + suffix))
            self._db = _open(path)
        with self._lock, self._transaction() as db:
            self._count = int(db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])
            self._trim(db, max_items)

    # -- writing ---------------------------------------------------------------------------

    def put(self, topic: str, payload: bytes) -> int:
        """Keep a message until it is acked; returns its ``seq`` (increasing, never reused)."""
        if not topic:
            raise ValueError("an outbox message needs a topic, got ''")
        with self._lock, self._transaction() as db:
            self._trim(db, self.max_items - 1)
            cursor = db.execute(
                "INSERT INTO outbox (topic, payload) VALUES (?, ?)", (topic, bytes(payload))
            )
            self._count += 1
            seq = cursor.lastrowid
        if seq is None:  # pragma: no cover - sqlite always reports the row of an INSERT
            raise RuntimeError(f"outbox {self.path}: the insert reported no row id")
        return seq

    def ack(self, seq: int) -> None:
        """Forget a delivered message; an unknown ``seq`` (acked before, or dropped) is ignored."""
        with self._lock, self._transaction() as db:
            removed = db.execute("DELETE FROM outbox WHERE seq = ?", (seq,)).rowcount
            self._count -= removed

    # -- reading ---------------------------------------------------------------------------

    def pending(self, limit: int = 100) -> list[OutboxItem]:
        """Up to ``limit`` waiting messages, oldest first (they stay until acked)."""
        if limit < 1:
            raise ValueError(f"limit must be 1 or more, got {limit}")
        with self._lock:
            rows = self._conn().execute(
                "SELECT seq, topic, payload FROM outbox ORDER BY seq LIMIT ?", (limit,)
            )
            return [OutboxItem(int(seq), str(topic), bytes(data)) for seq, topic, data in rows]

    def __len__(self) -> int:
        with self._lock:
            self._conn()
            return self._count

    @property
    def dropped(self) -> int:
        """Messages dropped because the outbox was full, over the file's whole life."""
        with self._lock:
            row = self._conn().execute("SELECT value FROM counters WHERE name = 'dropped'")
            return int(row.fetchone()[0])

    # -- lifecycle -------------------------------------------------------------------------

    def close(self) -> None:
        """Close the file (calling it again does nothing)."""
        with self._lock:
            db, self._db = self._db, None
        if db is not None:
            db.close()

    def __enter__(self) -> Outbox:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- internals (called with the lock held) ---------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError(f"outbox {self.path} is closed; open a new Outbox to use it")
        return self._db

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        db = self._conn()
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def _trim(self, db: sqlite3.Connection, keep: int) -> None:
        """Drop the oldest messages until at most ``keep`` are left, counting them."""
        excess = self._count - keep
        if excess <= 0:
            return
        db.execute(
            "DELETE FROM outbox WHERE seq IN (SELECT seq FROM outbox ORDER BY seq LIMIT ?)",
            (excess,),
        )
        db.execute("UPDATE counters SET value = value + ? WHERE name = 'dropped'", (excess,))
        self._count -= excess
        if not self._full_reported:  # once per process: a full outbox drops on every put
            self._full_reported = True
            log.warning(
                "outbox %s is full (%d messages): dropping the oldest from now on; the broker "
                "has been out of reach for long, or max_items is too small",
                self.path,
                self.max_items,
            )


def _open(path: Path) -> sqlite3.Connection:
    """Connect in autocommit mode (transactions are explicit), WAL, full sync; make the tables."""
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.executescript(_SCHEMA)
    except BaseException:
        db.close()
        raise
    return db
