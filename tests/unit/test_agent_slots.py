"""A/B slots on disk: the lifecycle table, activation and pruning, restarts, damaged state."""

from __future__ import annotations

import hashlib
import json
import logging
from collections import deque
from pathlib import Path

import pytest

from edge_agent.slots import AFTER_RESTART, TRANSITIONS, ModelSlots, SlotState
from edgefabric.errors import ConflictError, IntegrityError, InvalidModelError

pytestmark = pytest.mark.unit

S = SlotState


def add_version(slots: ModelSlots, tmp_path: Path, version: int, *, golden: bool = False) -> Path:
    """Install fake verified files for ``version`` (slots never parse the model)."""
    incoming = tmp_path / "incoming"
    incoming.mkdir(exist_ok=True)
    model = incoming / f"{version}.onnx"
    model.write_bytes(f"model {version}".encode())
    custom: dict[str, object] = {"kind": "model", "name": slots.name, "version": version}
    golden_file = None
    if golden:
        golden_file = incoming / f"{version}.npz"
        golden_file.write_bytes(b"golden")
        custom["golden"] = {"sha256": hashlib.sha256(b"golden").hexdigest(), "tolerances": {}}
    return slots.install_verified(version, model, golden_file, custom)


def path_to(state: SlotState) -> list[SlotState]:
    """The shortest legal walk from DOWNLOADING to ``state`` (breadth first over the table)."""
    walks = deque([[S.DOWNLOADING]])
    while walks:
        walk = walks.popleft()
        if walk[-1] is state:
            return walk
        walks.extend([*walk, nxt] for nxt in TRANSITIONS[walk[-1]] if nxt not in walk)
    raise AssertionError(f"{state} is unreachable")


def test_every_state_has_a_row_and_is_reachable():
    assert set(TRANSITIONS) == set(SlotState)
    for state in SlotState:
        assert path_to(state)[0] is S.DOWNLOADING


@pytest.mark.parametrize("source", list(SlotState))
def test_transition_table_is_enforced(tmp_path, source):
    walk = path_to(source)
    for target in SlotState:
        slots = ModelSlots(tmp_path / target, "mlp")
        for state in walk:
            slots.set_state(3, state, "broken" if state is S.FAILED else "")
        if target in TRANSITIONS[source]:
            slots.set_state(3, target)
            assert slots.state(3) is target
        else:
            with pytest.raises(ConflictError, match=f"slot mlp:3 is {source}; it cannot go to"):
                slots.set_state(3, target)
            assert slots.state(3) is source


def test_the_happy_path_in_order(tmp_path):
    slots = ModelSlots(tmp_path, "mlp")
    slots.set_state(1, S.DOWNLOADING)
    add_version(slots, tmp_path, 1)
    for state in (S.LOADING, S.SELF_TEST, S.READY, S.DRAINING, S.UNLOADED):
        slots.set_state(1, state)
    assert slots.versions == {1: S.UNLOADED}


def test_a_version_starts_as_downloading_or_verified(tmp_path):
    slots = ModelSlots(tmp_path, "mlp")
    with pytest.raises(ConflictError, match="not on this device; a version starts as"):
        slots.set_state(1, S.READY)
    assert slots.state(1) is None
    add_version(slots, tmp_path, 1)
    assert slots.state(1) is S.VERIFIED


def test_install_verified_moves_files_and_refuses_a_serving_version(tmp_path):
    slots = ModelSlots(tmp_path / "models", "mlp")
    folder = add_version(slots, tmp_path, 1, golden=True)
    assert folder == tmp_path / "models" / "mlp" / "1"
    assert not (tmp_path / "incoming" / "1.onnx").exists()
    assert slots.model_path(1).read_bytes() == b"model 1"
    assert slots.golden_path(1) == folder / "golden.npz"
    assert slots.custom(1)["version"] == 1
    for state in (S.LOADING, S.READY):
        slots.set_state(1, state)
    with pytest.raises(ConflictError, match="is READY; it cannot go to VERIFIED"):
        add_version(slots, tmp_path, 1)
    assert slots.model_path(1).read_bytes() == b"model 1"


def test_bad_names_and_versions_are_refused(tmp_path):
    with pytest.raises(InvalidModelError, match="cannot name a folder"):
        ModelSlots(tmp_path, "../etc")
    slots = ModelSlots(tmp_path, "mlp")
    with pytest.raises(InvalidModelError, match="not positive"):
        add_version(slots, tmp_path, 0)


def test_activate_keeps_n_previous_and_prunes_older_folders(tmp_path):
    slots = ModelSlots(tmp_path, "mlp", keep_previous=2)
    for version in (1, 2, 3, 4):
        add_version(slots, tmp_path, version)
        slots.activate(version)
    add_version(slots, tmp_path, 5)  # downloaded, not installed yet: kept
    add_version(slots, tmp_path, 6)
    slots.set_state(6, S.FAILED, "self-test")
    add_version(slots, tmp_path, 7)
    slots.activate(7)
    assert slots.active == 7
    assert slots.previous == [4, 3]
    on_disk = sorted(int(p.name) for p in slots.folder.iterdir() if p.name.isdigit())
    assert on_disk == [3, 4, 5, 7]
    assert slots.state(1) is None  # forgotten
    assert slots.state(6) is S.FAILED  # remembered, files gone
    assert slots.reason(6) == "self-test"


def test_activate_refuses_failed_or_absent_versions(tmp_path):
    slots = ModelSlots(tmp_path, "mlp")
    add_version(slots, tmp_path, 1)
    slots.set_state(1, S.FAILED, "bad")
    with pytest.raises(ConflictError, match="only a verified version"):
        slots.activate(1)
    with pytest.raises(ConflictError, match="not on this device"):
        slots.activate(2)


def test_rollback_target_skips_failed_and_missing_versions(tmp_path):
    slots = ModelSlots(tmp_path, "mlp", keep_previous=3)
    for version in (1, 2, 3, 4):
        add_version(slots, tmp_path, version)
        slots.activate(version)
    assert slots.previous == [3, 2, 1]
    assert slots.rollback_target() == 3
    slots.set_state(3, S.FAILED, "crash loop")
    assert slots.rollback_target() == 2
    slots.model_path(2).unlink()
    assert slots.rollback_target() == 1
    slots.set_state(1, S.FAILED, "bad")
    assert slots.rollback_target() is None


def test_state_survives_reopening(tmp_path):
    slots = ModelSlots(tmp_path, "mlp")
    for version in (1, 2):
        add_version(slots, tmp_path, version)
        for state in (S.LOADING, S.SELF_TEST, S.READY):
            slots.set_state(version, state)
        slots.activate(version)
    slots.set_state(1, S.DRAINING)
    add_version(slots, tmp_path, 3)
    slots.set_state(3, S.FAILED, "output 'logits' off")
    add_version(slots, tmp_path, 4)
    slots.set_state(4, S.LOADING)

    again = ModelSlots(tmp_path, "mlp")
    assert again.active == 2
    assert again.previous == [1]
    assert again.reason(3) == "output 'logits' off"
    # A new process serves nothing yet: process-bound states are mapped by AFTER_RESTART.
    assert again.versions == {1: S.UNLOADED, 2: S.UNLOADED, 3: S.FAILED, 4: S.VERIFIED}
    assert again.interrupted == (4,)
    assert AFTER_RESTART[S.READY] is S.UNLOADED


@pytest.mark.parametrize("damage", ["garbage", "wrong-shape", "missing"])
def test_damaged_state_is_rebuilt_from_folders(tmp_path, caplog, damage):
    slots = ModelSlots(tmp_path, "mlp")
    for version in (1, 2):
        add_version(slots, tmp_path, version)
        slots.activate(version)
    (slots.folder / "3").mkdir()  # an install cut short: no files
    state_file = slots.folder / "state.json"
    if damage == "garbage":
        state_file.write_bytes(b"\x00{not json")
    elif damage == "wrong-shape":
        state_file.write_text(json.dumps({"format": 1, "active": "two", "previous": []}))
    else:
        state_file.unlink()

    with caplog.at_level(logging.WARNING, logger="edge_agent.slots"):
        again = ModelSlots(tmp_path, "mlp")
    assert "rebuilding it from folders" in caplog.text
    assert again.active is None  # not known any more: the server self-tests the newest again
    assert again.versions == {1: S.VERIFIED, 2: S.VERIFIED, 3: S.FAILED}
    assert "incomplete" in again.reason(3)
    assert json.loads(state_file.read_text())["versions"]["2"]["state"] == "VERIFIED"
    if damage != "missing":
        assert (slots.folder / "state.json.damaged").is_file()


def test_crash_counter_persists(tmp_path):
    slots = ModelSlots(tmp_path, "mlp")
    add_version(slots, tmp_path, 1)
    assert slots.record_crash(1) == 1
    assert slots.record_crash(1) == 2
    again = ModelSlots(tmp_path, "mlp")
    assert again.crashes(1) == 2
    assert again.record_crash(1) == 3


def test_verify_detects_changed_files(tmp_path):
    slots = ModelSlots(tmp_path, "mlp")
    add_version(slots, tmp_path, 1, golden=True)
    slots.verify(1)
    slots.model_path(1).write_bytes(b"flipped bits")
    with pytest.raises(IntegrityError, match=r"model\.onnx has sha256 .* the file changed on disk"):
        slots.verify(1)
    add_version(slots, tmp_path, 2, golden=True)
    (slots.folder / "2" / "golden.npz").unlink()
    with pytest.raises(IntegrityError, match=r"golden\.npz is missing"):
        slots.verify(2)


def test_discover_finds_every_model(tmp_path):
    for name in ("mlp", "cnn"):
        slots = ModelSlots(tmp_path, name)
        add_version(slots, tmp_path, 1)
        slots.activate(1)
    (tmp_path / ".hidden").mkdir()
    found = ModelSlots.discover(tmp_path, keep_previous=1)
    assert sorted(found) == ["cnn", "mlp"]
    assert found["cnn"].active == 1
    assert found["cnn"].keep_previous == 1
    assert ModelSlots.discover(tmp_path / "absent", keep_previous=1) == {}
