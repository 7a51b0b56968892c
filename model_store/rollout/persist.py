"""Rollouts kept in the registry's ``rollouts`` table: one row per rollout, its state as JSON.

Each call is one SQL statement, so it is atomic on its own and may also run inside a caller's
:meth:`Registry.transaction` (the controller saves a rollout before acting on a tick, see
:mod:`.core`). Ids are ``ro-`` and 8 hex digits.
"""

from __future__ import annotations

import builtins
import re
import secrets
import sqlite3

from edgefabric.errors import ConflictError, IntegrityError, ModelNotFoundError
from model_store.registry import Registry
from model_store.rollout.core import ACTIVE_PHASES, Rollout

__all__ = ["ROLLOUT_ID", "RolloutStore", "new_rollout_id"]

ROLLOUT_ID = re.compile(r"ro-[0-9a-f]{8}")


def new_rollout_id() -> str:
    """A fresh random id such as ``ro-1a2b3c4d``."""
    return f"ro-{secrets.token_hex(4)}"


def _connection(registry: Registry) -> sqlite3.Connection:
    # The registry offers no public SQL access; this is the one place that reaches in.
    return registry._db


class RolloutStore:
    """Create, save, read and list rollouts."""

    def __init__(self, registry: Registry) -> None:
        self._db = _connection(registry)

    def new_id(self) -> str:
        """An id no stored rollout has."""
        while True:
            candidate = new_rollout_id()
            if self._row(candidate) is None:
                return candidate

    def create(self, rollout: Rollout) -> None:
        """Store a new rollout; :class:`ConflictError` when the id is taken or malformed."""
        if not ROLLOUT_ID.fullmatch(rollout.id):
            raise ConflictError(f"rollout id {rollout.id!r} is malformed: expected ro-<8 hex>")
        try:
            self._db.execute(
                "INSERT INTO rollouts (id, model, phase, created_s, state) VALUES (?, ?, ?, ?, ?)",
                (
                    rollout.id,
                    rollout.spec.model,
                    rollout.phase.value,
                    rollout.created_s,
                    rollout.to_json(),
                ),
            )
        except sqlite3.IntegrityError:
            raise ConflictError(f"rollout {rollout.id} already exists") from None

    def save(self, rollout: Rollout) -> None:
        """Replace the stored state; :class:`ModelNotFoundError` when it was never created."""
        cursor = self._db.execute(
            "UPDATE rollouts SET phase = ?, state = ? WHERE id = ?",
            (rollout.phase.value, rollout.to_json(), rollout.id),
        )
        if cursor.rowcount == 0:
            raise self._unknown(rollout.id)

    def get(self, rollout_id: str) -> Rollout:
        """One rollout; :class:`ModelNotFoundError` when no rollout has that id."""
        row = self._row(rollout_id)
        if row is None:
            raise self._unknown(rollout_id)
        return _load(rollout_id, row)

    def list(self, *, active_only: bool = False) -> builtins.list[Rollout]:
        """Every rollout (or only those that still own their devices), oldest first."""
        rows = self._db.execute("SELECT id, phase, state FROM rollouts ORDER BY created_s, id")
        return [
            _load(str(rollout_id), str(state))
            for rollout_id, phase, state in rows
            if not active_only or phase in ACTIVE_PHASES
        ]

    def _row(self, rollout_id: str) -> str | None:
        found = self._db.execute("SELECT state FROM rollouts WHERE id = ?", (rollout_id,))
        row = found.fetchone()
        return None if row is None else str(row[0])

    def _unknown(self, rollout_id: str) -> ModelNotFoundError:
        recent = self._db.execute("SELECT id FROM rollouts ORDER BY created_s DESC LIMIT 3")
        known = [str(row[0]) for row in recent]
        hint = f"the latest are {', '.join(known)}" if known else "there are none yet"
        return ModelNotFoundError(
            f"no rollout {rollout_id!r}: {hint}; `edgefabric rollout list` shows them all"
        )


def _load(rollout_id: str, state: str) -> Rollout:
    try:
        return Rollout.from_json(state)
    except ValueError as exc:
        raise IntegrityError(f"stored rollout {rollout_id} is damaged: {exc}") from None
