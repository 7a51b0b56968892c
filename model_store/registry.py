"""The registry: model versions, their stages, labels and lineage, in SQLite.

Schema changes are numbered migrations applied in order and recorded in ``PRAGMA
user_version``, so an older store upgrades itself the first time a newer CLI opens it.
Writers use ``BEGIN IMMEDIATE`` transactions: one writer at a time, readers never blocked.
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from edgefabric.errors import ConflictError, InvalidModelError, ModelNotFoundError

__all__ = ["GoldenRef", "ModelVersion", "Registry", "Stage", "check_model_name"]

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")

MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE versions (
        name TEXT NOT NULL,
        version INTEGER NOT NULL,
        sha256 TEXT NOT NULL,
        size INTEGER NOT NULL,
        stage TEXT NOT NULL,
        labels TEXT NOT NULL,
        lineage TEXT NOT NULL,
        contract TEXT NOT NULL,
        golden TEXT,
        created_at TEXT NOT NULL,
        created_by TEXT NOT NULL,
        PRIMARY KEY (name, version)
    );
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    """,
    # Rollouts (model_store.rollout.persist): the whole state as JSON, a few columns to list by.
    """
    CREATE TABLE rollouts (
        id TEXT PRIMARY KEY,
        model TEXT NOT NULL,
        phase TEXT NOT NULL,
        created_s REAL NOT NULL,
        state TEXT NOT NULL
    );
    CREATE INDEX rollouts_by_phase ON rollouts (phase, created_s);
    """,
    # Route tables for the gateways (model_store.routes): one row per model, in --route syntax.
    """
    CREATE TABLE routes (
        model TEXT PRIMARY KEY,
        spec TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        updated_by TEXT NOT NULL
    );
    """,
)


class Stage(StrEnum):
    """Where a version is in its life. ``archived``: replaced in production, may come back."""

    NONE = "none"
    STAGING = "staging"
    PRODUCTION = "production"
    ARCHIVED = "archived"
    DEPRECATED = "deprecated"


def check_model_name(name: str) -> str:
    """``name`` when usable as a folder and topic level; else a clear error."""
    if not _NAME.fullmatch(name):
        raise InvalidModelError(
            f"model name {name!r} is not allowed: use letters, digits, '.', '_' or '-' "
            "(starting with a letter or digit, at most 128 characters)"
        )
    return name


@dataclass(frozen=True)
class GoldenRef:
    """The stored golden vectors of a version."""

    sha256: str
    size: int
    tolerances: dict[str, dict[str, str]]


@dataclass(frozen=True)
class ModelVersion:
    """One registered version."""

    name: str
    version: int
    sha256: str
    size: int
    stage: Stage
    contract: dict[str, Any]
    created_at: str
    created_by: str
    labels: dict[str, str] = field(default_factory=dict)
    lineage: dict[str, str] = field(default_factory=dict)
    golden: GoldenRef | None = None

    @property
    def ref(self) -> str:
        """``name:version``."""
        return f"{self.name}:{self.version}"


def _row_to_version(row: sqlite3.Row) -> ModelVersion:
    golden = json.loads(row["golden"]) if row["golden"] else None
    return ModelVersion(
        name=row["name"],
        version=row["version"],
        sha256=row["sha256"],
        size=row["size"],
        stage=Stage(row["stage"]),
        contract=json.loads(row["contract"]),
        created_at=row["created_at"],
        created_by=row["created_by"],
        labels=json.loads(row["labels"]),
        lineage=json.loads(row["lineage"]),
        golden=GoldenRef(**golden) if golden else None,
    )


class Registry:
    """Typed access to the SQLite registry."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None, timeout=30.0)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._migrate()

    def close(self) -> None:
        """Close the connection."""
        self._db.close()

    def _migrate(self) -> None:
        with self.transaction():
            current = int(self._db.execute("PRAGMA user_version").fetchone()[0])
            for number, script in enumerate(MIGRATIONS[current:], current + 1):
                for statement in filter(str.strip, script.split(";")):
                    self._db.execute(statement)
                self._db.execute(f"PRAGMA user_version = {number}")

    @property
    def schema_version(self) -> int:
        """The number of migrations applied."""
        return int(self._db.execute("PRAGMA user_version").fetchone()[0])

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """One write transaction; rolled back when the block raises."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def versions(self, name: str | None = None) -> list[ModelVersion]:
        """Every version (of ``name``), ordered by name and version."""
        if name is None:
            rows = self._db.execute("SELECT * FROM versions ORDER BY name, version")
        else:
            rows = self._db.execute(
                "SELECT * FROM versions WHERE name = ? ORDER BY version", (name,)
            )
        return [_row_to_version(row) for row in rows]

    def get(self, name: str, version: int) -> ModelVersion:
        """One version; :class:`ModelNotFoundError` naming what exists when unknown."""
        row = self._db.execute(
            "SELECT * FROM versions WHERE name = ? AND version = ?", (name, version)
        ).fetchone()
        if row is not None:
            return _row_to_version(row)
        known = [v.version for v in self.versions(name)]
        if not known:
            raise ModelNotFoundError(f"no model named {name!r} in the store")
        raise ModelNotFoundError(f"model {name!r} has no version {version}; it has {known}")

    def latest(self, name: str) -> ModelVersion:
        """The highest version of ``name``."""
        found = self.versions(name)
        if not found:
            raise ModelNotFoundError(f"no model named {name!r} in the store")
        return found[-1]

    def next_version(self, name: str) -> int:
        """One past the highest version of ``name`` (1 for a new model)."""
        row = self._db.execute("SELECT MAX(version) FROM versions WHERE name = ?", (name,))
        return int(row.fetchone()[0] or 0) + 1

    def insert(self, version: ModelVersion) -> None:
        """Add a version; :class:`ConflictError` when it exists."""
        try:
            self._db.execute(
                "INSERT INTO versions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    version.name,
                    version.version,
                    version.sha256,
                    version.size,
                    version.stage.value,
                    json.dumps(version.labels, sort_keys=True),
                    json.dumps(version.lineage, sort_keys=True),
                    json.dumps(version.contract, sort_keys=True),
                    json.dumps(version.golden.__dict__, sort_keys=True) if version.golden else None,
                    version.created_at,
                    version.created_by,
                ),
            )
        except sqlite3.IntegrityError:
            raise ConflictError(
                f"{version.ref} already exists; versions are immutable, push with another "
                "--version or leave it out to take the next one"
            ) from None

    def set_stage(self, name: str, version: int, stage: Stage) -> None:
        """Record a stage change (callers check that it is allowed)."""
        self._db.execute(
            "UPDATE versions SET stage = ? WHERE name = ? AND version = ?",
            (stage.value, name, version),
        )

    def meta(self, key: str, default: str = "") -> str:
        """A value from the key/value table."""
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return str(row[0]) if row else default

    def set_meta(self, key: str, value: str) -> None:
        """Set a value in the key/value table."""
        self._db.execute(
            "INSERT INTO meta VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    def meta_items(self, prefix: str) -> Mapping[str, str]:
        """Every key/value whose key starts with ``prefix``."""
        rows = self._db.execute("SELECT key, value FROM meta WHERE key LIKE ?", (prefix + "%",))
        return {str(k): str(v) for k, v in rows}

    def routes(self) -> dict[str, str]:
        """The gateways' route table: model -> route in ``--route`` syntax after ``MODEL=``."""
        rows = self._db.execute("SELECT model, spec FROM routes ORDER BY model")
        return {str(model): str(spec) for model, spec in rows}

    def put_route(self, model: str, spec: str, *, at: str, by: str) -> None:
        """Set ``model``'s route (callers validate ``spec``)."""
        self._db.execute(
            "INSERT INTO routes VALUES (?, ?, ?, ?) ON CONFLICT(model) DO UPDATE SET "
            "spec = excluded.spec, updated_at = excluded.updated_at, "
            "updated_by = excluded.updated_by",
            (model, spec, at, by),
        )

    def delete_route(self, model: str) -> bool:
        """Remove ``model``'s route; whether it had one."""
        return self._db.execute("DELETE FROM routes WHERE model = ?", (model,)).rowcount > 0
