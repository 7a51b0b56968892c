"""The hash-chained audit log detects edited, removed and truncated entries."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from model_store.audit import GENESIS, AuditLog

pytestmark = pytest.mark.unit


def _log_with(tmp_path: Path, count: int) -> tuple[AuditLog, tuple[int, str]]:
    log = AuditLog(tmp_path / "audit.log")
    head = (0, GENESIS)
    for number in range(count):
        entry = log.append(
            actor="ops", action="model.push", subject=f"m:{number + 1}", details={}, head=head
        )
        head = (entry.seq, entry.hash)
    return log, head


def _rewrite(log: AuditLog, lines: list[str]) -> None:
    log.path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


def test_an_untouched_log_verifies(tmp_path: Path) -> None:
    log, head = _log_with(tmp_path, 3)
    assert log.verify(head) == []
    assert [e.seq for e in log.entries()] == [1, 2, 3]


def test_an_empty_log_verifies_against_the_genesis_head(tmp_path: Path) -> None:
    assert AuditLog(tmp_path / "audit.log").verify((0, GENESIS)) == []


def test_an_edited_entry_is_detected(tmp_path: Path) -> None:
    log, head = _log_with(tmp_path, 3)
    lines = log.path.read_text().splitlines()
    entry = json.loads(lines[1])
    entry["actor"] = "mallory"
    lines[1] = json.dumps(entry, sort_keys=True)
    _rewrite(log, lines)
    assert log.verify(head) == ["entry 2: content was edited (hash mismatch)"]


def test_a_removed_middle_entry_is_detected(tmp_path: Path) -> None:
    log, head = _log_with(tmp_path, 3)
    lines = log.path.read_text().splitlines()
    _rewrite(log, [lines[0], lines[2]])
    problems = log.verify(head)
    assert "entry 3: expected entry 2 here (removed?)" in problems
    assert "entry 3: does not follow the entry before it" in problems


def test_entries_removed_from_the_end_are_detected_by_the_head(tmp_path: Path) -> None:
    log, head = _log_with(tmp_path, 3)
    _rewrite(log, log.path.read_text().splitlines()[:2])
    (problem,) = log.verify(head)
    assert problem.startswith("log ends at entry 2 but the registry recorded entry 3")


def test_a_garbage_line_is_reported_not_raised(tmp_path: Path) -> None:
    log, head = _log_with(tmp_path, 1)
    with log.path.open("a") as handle:
        handle.write("not json\n")
    (problem,) = log.verify(head)
    assert "audit.log:2: not an audit entry" in problem
