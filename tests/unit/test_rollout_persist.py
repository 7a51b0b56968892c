"""Rollouts stored in the registry: create, save, read back, list, and the errors for misuse."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from edgefabric.errors import ConflictError, IntegrityError, ModelNotFoundError
from model_store.registry import MIGRATIONS, Registry
from model_store.rollout import (
    DeviceView,
    Rollout,
    RolloutEngine,
    RolloutPhase,
    RolloutSpec,
    RolloutStore,
    new_rollout_id,
)
from model_store.rollout.persist import ROLLOUT_ID

pytestmark = pytest.mark.unit

FLEET = {f"d{i}": DeviceView(f"d{i}", {"site": "a"}, True, 0.0, {"det": 1}) for i in range(4)}


def _rollout(rollout_id: str, now_s: float = 0.0, model: str = "det") -> Rollout:
    spec = RolloutSpec.parse(f"{model}:2", stages="50%,100%", gates=["p99_ms<40"])
    return RolloutEngine().start(rollout_id, spec, FLEET, now_s)


@pytest.fixture
def store(tmp_path: Path) -> RolloutStore:
    return RolloutStore(Registry(tmp_path / "registry.db"))


def test_ids_look_like_ro_and_8_hex_digits(store: RolloutStore) -> None:
    assert ROLLOUT_ID.fullmatch(new_rollout_id())
    assert ROLLOUT_ID.fullmatch(store.new_id())


def test_a_rollout_survives_a_reopen(tmp_path: Path) -> None:
    engine = RolloutEngine()
    first = RolloutStore(Registry(tmp_path / "registry.db"))
    rollout = _rollout("ro-0000000a")
    first.create(rollout)
    engine.tick(rollout, FLEET, 1.0)
    first.save(rollout)
    again = RolloutStore(Registry(tmp_path / "registry.db"))
    assert again.get("ro-0000000a") == rollout
    assert len(again.get("ro-0000000a").devices) == 2


def test_list_is_oldest_first_and_filters_active(store: RolloutStore) -> None:
    engine = RolloutEngine()
    old, new = _rollout("ro-000000bb", 5.0), _rollout("ro-000000aa", 9.0, model="seg")
    store.create(new)
    store.create(old)
    assert [r.id for r in store.list()] == ["ro-000000bb", "ro-000000aa"]
    engine.abort(old, 10.0)
    store.save(old)
    assert [r.id for r in store.list(active_only=True)] == ["ro-000000aa"]
    assert store.get("ro-000000bb").phase is RolloutPhase.ABORTED


def test_unknown_ids_are_not_found(store: RolloutStore) -> None:
    with pytest.raises(ModelNotFoundError) as caught:
        store.get("ro-deadbeef")
    assert str(caught.value) == (
        "no rollout 'ro-deadbeef': there are none yet; `edgefabric rollout list` shows them all"
    )
    store.create(_rollout("ro-00000001"))
    with pytest.raises(ModelNotFoundError, match=r"the latest are ro-00000001;"):
        store.save(_rollout("ro-00000002"))


def test_create_refuses_a_taken_or_malformed_id(store: RolloutStore) -> None:
    store.create(_rollout("ro-00000001"))
    with pytest.raises(ConflictError, match=r"rollout ro-00000001 already exists"):
        store.create(_rollout("ro-00000001"))
    with pytest.raises(ConflictError, match=r"rollout id 'r1' is malformed: expected ro-<8 hex>"):
        store.create(_rollout("r1"))


def test_a_damaged_row_is_an_integrity_error(tmp_path: Path) -> None:
    store = RolloutStore(Registry(tmp_path / "registry.db"))
    store.create(_rollout("ro-00000001"))
    with sqlite3.connect(tmp_path / "registry.db") as db:
        db.execute("UPDATE rollouts SET state = '{\"format\": 1}'")
    with pytest.raises(IntegrityError, match=r"stored rollout ro-00000001 is damaged"):
        store.get("ro-00000001")


def test_the_rollout_table_comes_with_a_migration(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "registry.db")
    assert registry.schema_version == len(MIGRATIONS)
    with sqlite3.connect(tmp_path / "registry.db") as db:
        names = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
    assert {"rollouts", "rollouts_by_phase"} <= names


def test_saves_join_a_callers_transaction(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "other.db")
    store = RolloutStore(registry)
    rollout = _rollout("ro-00000001")
    store.create(rollout)
    RolloutEngine().pause(rollout, 1.0)

    def save_then_fail() -> None:
        with registry.transaction():
            store.save(rollout)
            raise RuntimeError("the publish failed")

    with pytest.raises(RuntimeError, match="publish"):
        save_then_fail()
    assert store.get("ro-00000001").phase is RolloutPhase.RUNNING
