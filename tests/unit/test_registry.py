"""The SQLite registry: migrations, versions, stages, conflicts."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from edgefabric.errors import ConflictError, InvalidModelError, ModelNotFoundError
from model_store.registry import MIGRATIONS, ModelVersion, Registry, Stage, check_model_name

pytestmark = pytest.mark.unit


def _version(name: str = "mlp", number: int = 1) -> ModelVersion:
    return ModelVersion(
        name=name,
        version=number,
        sha256="a" * 64,
        size=10,
        stage=Stage.NONE,
        contract={"inputs": []},
        created_at="2026-01-01T00:00:00+00:00",
        created_by="ops",
        labels={"team": "vision"},
        lineage={"source_commit": "abc"},
    )


def test_a_new_registry_has_every_migration(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "r.db")
    assert registry.schema_version == len(MIGRATIONS)


def test_reopening_does_not_reapply_migrations(tmp_path: Path) -> None:
    Registry(tmp_path / "r.db").insert(_version())
    again = Registry(tmp_path / "r.db")
    assert [v.ref for v in again.versions()] == ["mlp:1"]


def test_an_old_schema_is_upgraded(tmp_path: Path) -> None:
    with sqlite3.connect(tmp_path / "r.db") as db:
        db.execute("PRAGMA user_version = 0")
    assert Registry(tmp_path / "r.db").schema_version == len(MIGRATIONS)


def test_versions_round_trip(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "r.db")
    registry.insert(_version())
    assert registry.get("mlp", 1) == _version()
    assert registry.next_version("mlp") == 2
    assert registry.next_version("other") == 1


def test_a_duplicate_version_is_a_conflict(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "r.db")
    registry.insert(_version())
    with pytest.raises(ConflictError, match="mlp:1 already exists"):
        registry.insert(_version())


def test_unknown_names_and_versions_say_what_exists(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "r.db")
    registry.insert(_version())
    with pytest.raises(ModelNotFoundError, match="no model named 'cnn'"):
        registry.get("cnn", 1)
    with pytest.raises(ModelNotFoundError, match=r"has no version 7; it has \[1\]"):
        registry.get("mlp", 7)


def test_a_failed_transaction_leaves_nothing(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "r.db")

    def insert_then_fail() -> None:
        with registry.transaction():
            registry.insert(_version())
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        insert_then_fail()
    assert registry.versions() == []


def test_stage_changes_are_recorded(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "r.db")
    registry.insert(_version())
    registry.set_stage("mlp", 1, Stage.PRODUCTION)
    assert registry.get("mlp", 1).stage is Stage.PRODUCTION


@pytest.mark.parametrize("name", ["", "../x", "a/b", "-lead", "x" * 200, "sp ace"])
def test_unusable_model_names_are_refused(name: str) -> None:
    with pytest.raises(InvalidModelError, match="is not allowed"):
        check_model_name(name)
