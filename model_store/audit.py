"""An append-only, hash-chained audit log of every change to the store.

Each line is a JSON object whose ``hash`` covers its own fields and the previous entry's hash,
so editing or removing any entry breaks the chain. The newest entry's sequence number and hash
are also kept in the registry (``head``), which catches removing entries from the end.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

__all__ = ["GENESIS", "AuditEntry", "AuditLog"]

GENESIS = "0" * 64


def _entry_hash(body: Mapping[str, Any]) -> str:
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class AuditEntry:
    """One recorded action."""

    seq: int
    at: str
    actor: str
    action: str
    subject: str
    details: Mapping[str, Any]
    prev: str
    hash: str

    def body(self) -> dict[str, Any]:
        """The hashed fields."""
        return {
            "seq": self.seq,
            "at": self.at,
            "actor": self.actor,
            "action": self.action,
            "subject": self.subject,
            "details": dict(self.details),
            "prev": self.prev,
        }


class AuditLog:
    """The JSON-lines file; appends happen under the store's write lock."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def entries(self) -> list[AuditEntry]:
        """Every entry as written (raises ``ValueError`` on a line that is not an entry)."""
        if not self.path.exists():
            return []
        entries = []
        for number, line in enumerate(self.path.read_text(encoding="utf-8").splitlines(), 1):
            try:
                raw = json.loads(line)
                entries.append(AuditEntry(**raw))
            except (json.JSONDecodeError, TypeError) as exc:
                raise ValueError(f"{self.path}:{number}: not an audit entry ({exc})") from None
        return entries

    def append(
        self,
        *,
        actor: str,
        action: str,
        subject: str,
        details: Mapping[str, Any],
        head: tuple[int, str],
    ) -> AuditEntry:
        """Append after ``head`` (seq, hash of the newest entry); returns the new entry."""
        seq, prev = head
        body: dict[str, Any] = {
            "seq": seq + 1,
            "at": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "actor": actor,
            "action": action,
            "subject": subject,
            "details": dict(details),
            "prev": prev,
        }
        entry = AuditEntry(**body, hash=_entry_hash(body))
        line = json.dumps({**entry.body(), "hash": entry.hash}, sort_keys=True) + "\n"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(line)
            handle.flush()
            os.fsync(handle.fileno())
        return entry

    def verify(self, head: tuple[int, str]) -> list[str]:
        """Problems in the chain (empty: intact), checked against the recorded ``head``."""
        try:
            entries = self.entries()
        except ValueError as exc:
            return [str(exc)]
        problems = []
        prev, expected_seq = GENESIS, 1
        for entry in entries:
            if entry.seq != expected_seq:
                problems.append(f"entry {entry.seq}: expected entry {expected_seq} here (removed?)")
            if entry.prev != prev:
                problems.append(f"entry {entry.seq}: does not follow the entry before it")
            if _entry_hash(entry.body()) != entry.hash:
                problems.append(f"entry {entry.seq}: content was edited (hash mismatch)")
            prev, expected_seq = entry.hash, entry.seq + 1
        last = (entries[-1].seq, entries[-1].hash) if entries else (0, GENESIS)
        if last != tuple(head):
            problems.append(
                f"log ends at entry {last[0]} but the registry recorded entry {head[0]} "
                "(entries removed from the end, or the log was replaced)"
            )
        return problems
