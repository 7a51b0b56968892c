"""Agent settings: validated when they load, desired state authenticated unless said otherwise."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from edge_agent.settings import AgentSettings, read_settings_file

pytestmark = pytest.mark.unit


def _base(tmp_path: Path) -> dict[str, object]:
    root = tmp_path / "root.json"
    root.write_text("{}")
    return {
        "device_id": "cam-1",
        "broker": "mqtt://127.0.0.1:1883",
        "trust_root": root,
        "data_dir": tmp_path / "data",
    }


def test_a_desired_state_key_is_required(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="desired_key is required"):
        AgentSettings(**_base(tmp_path))  # type: ignore[arg-type]


def test_unsigned_desired_state_must_be_asked_for(tmp_path: Path) -> None:
    settings = AgentSettings(**_base(tmp_path), allow_unsigned_desired=True)  # type: ignore[arg-type]
    assert settings.desired_key is None


def test_a_missing_trust_root_is_named(tmp_path: Path) -> None:
    values = {**_base(tmp_path), "trust_root": tmp_path / "nope.json", "desired_key": tmp_path}
    with pytest.raises(ValidationError, match=r"nope\.json is not a file"):
        AgentSettings(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize("device_id", ["", "a/b", "+", "#", "x" * 200])
def test_device_ids_that_cannot_be_topic_levels_are_refused(tmp_path: Path, device_id: str) -> None:
    values = {**_base(tmp_path), "device_id": device_id, "allow_unsigned_desired": True}
    with pytest.raises(ValidationError):
        AgentSettings(**values)  # type: ignore[arg-type]


def test_settings_files_are_toml(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text('device_id = "cam-9"\nhealth_interval_s = 2.5\n[labels]\nsite = "plant-7"\n')
    assert read_settings_file(path) == {
        "device_id": "cam-9",
        "health_interval_s": 2.5,
        "labels": {"site": "plant-7"},
    }
    path.write_text("not = [toml")
    with pytest.raises(ValueError, match="cannot read agent settings"):
        read_settings_file(path)
