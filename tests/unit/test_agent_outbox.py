"""The agent's outbox: order, durability across reopen and kill -9, acks, bound, threads."""

from __future__ import annotations

import logging
import os
import signal
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from edge_agent.outbox import Outbox, OutboxItem

pytestmark = pytest.mark.unit

REPO_ROOT = Path(__file__).resolve().parents[2]
TOPIC = "ef/v1/dev/d1/events"


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "agent" / "outbox.db"


def test_pending_is_oldest_first_with_increasing_seq(path: Path) -> None:
    with Outbox(path) as box:
        seqs = [box.put(TOPIC, f"event {i}".encode()) for i in range(5)]
        assert seqs == sorted(seqs)
        assert len(set(seqs)) == 5
        assert box.pending() == [
            OutboxItem(seq, TOPIC, f"event {i}".encode()) for i, seq in enumerate(seqs)
        ]
        assert [item.seq for item in box.pending(limit=2)] == seqs[:2]
        assert len(box) == 5


def test_messages_survive_reopen(path: Path) -> None:
    with Outbox(path) as box:
        box.put(TOPIC, b"a")
        box.put("ef/v1/dev/d1/status", b"\x00\x01binary")
        before = box.pending()
    with Outbox(path) as box:
        assert box.pending() == before
        assert len(box) == 2


def test_ack_removes_one_and_ignores_unknown(path: Path) -> None:
    with Outbox(path) as box:
        first, second, third = (box.put(TOPIC, bytes([i])) for i in range(3))
        box.ack(second)
        box.ack(second)  # delivered twice (QoS 1): the second ack finds nothing
        box.ack(12345)
        assert [item.seq for item in box.pending()] == [first, third]
        assert len(box) == 2


def test_seq_is_never_reused_after_ack_and_reopen(path: Path) -> None:
    with Outbox(path) as box:
        last = box.put(TOPIC, b"x")
        box.ack(last)
    with Outbox(path) as box:
        assert box.put(TOPIC, b"y") > last


def test_full_outbox_drops_oldest_and_counts_them(
    path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with (
        caplog.at_level(logging.WARNING, logger="edge_agent.outbox"),
        Outbox(path, max_items=3) as box,
    ):
        for i in range(5):
            box.put(TOPIC, bytes([i]))
        assert [item.payload for item in box.pending()] == [b"\x02", b"\x03", b"\x04"]
        assert len(box) == 3
        assert box.dropped == 2
    assert sum("is full" in r.getMessage() for r in caplog.records) == 1
    with Outbox(path, max_items=3) as box:
        assert box.dropped == 2  # persisted


def test_reopening_smaller_drops_the_excess(path: Path) -> None:
    with Outbox(path) as box:
        for i in range(5):
            box.put(TOPIC, bytes([i]))
    with Outbox(path, max_items=2) as box:
        assert [item.payload for item in box.pending()] == [b"\x03", b"\x04"]
        assert box.dropped == 3


def test_concurrent_puts_are_each_stored_once(path: Path) -> None:
    threads, per_thread = 8, 50
    seqs: list[int] = []
    seqs_lock = threading.Lock()
    start = threading.Barrier(threads)

    with Outbox(path) as box:

        def produce(worker: int) -> None:
            start.wait()
            for i in range(per_thread):
                seq = box.put(TOPIC, f"{worker}:{i}".encode())
                with seqs_lock:
                    seqs.append(seq)

        workers = [threading.Thread(target=produce, args=(w,)) for w in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()

        items = box.pending(limit=threads * per_thread + 1)
        assert len(items) == len(box) == threads * per_thread
        assert sorted(seqs) == [item.seq for item in items]
        payloads = {item.payload for item in items}
        expected = {f"{w}:{i}".encode() for w in range(threads) for i in range(per_thread)}
        assert payloads == expected
        for w in range(threads):  # each producer's own messages keep their order
            mine = [item.payload for item in items if item.payload.startswith(f"{w}:".encode())]
            assert mine == [f"{w}:{i}".encode() for i in range(per_thread)]


def test_acks_from_another_thread_while_putting(path: Path) -> None:
    with Outbox(path) as box:
        first = [box.put(TOPIC, b"old") for _ in range(100)]

        def ack_all() -> None:
            for seq in first:
                box.ack(seq)

        acker = threading.Thread(target=ack_all)
        acker.start()
        later = [box.put(TOPIC, b"new") for _ in range(100)]
        acker.join()
        assert [item.seq for item in box.pending(limit=500)] == later
        assert len(box) == 100


def test_closed_outbox_refuses_use(path: Path) -> None:
    box = Outbox(path)
    box.close()
    box.close()
    with pytest.raises(RuntimeError, match="is closed"):
        box.put(TOPIC, b"x")
    with pytest.raises(RuntimeError, match="is closed"):
        len(box)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda box: box.put("", b"x"), "needs a topic"),
        (lambda box: box.pending(limit=0), "limit must be"),
    ],
)
def test_bad_arguments(path: Path, call: Callable[[Outbox], object], message: str) -> None:
    with Outbox(path) as box, pytest.raises(ValueError, match=message):
        call(box)


def test_bad_bound(path: Path) -> None:
    with pytest.raises(ValueError, match="max_items must be 1 or more, got 0"):
        Outbox(path, max_items=0)


def test_damaged_file_is_moved_aside(path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path.parent.mkdir(parents=True)
    path.write_bytes(b"this is not a database, it is a damaged file" * 100)
    with caplog.at_level(logging.WARNING, logger="edge_agent.outbox"), Outbox(path) as box:
        assert len(box) == 0
        box.put(TOPIC, b"fresh")
    assert "unreadable" in caplog.text
    aside = [p for p in path.parent.iterdir() if ".damaged-" in p.name]
    assert len(aside) == 1
    assert aside[0].read_bytes().startswith(b"this is not a database")


_WRITER = """
import sys
from pathlib import Path
from edge_agent.outbox import Outbox

box = Outbox(Path(sys.argv[1]))
i = 0
while True:
    box.put("ef/v1/dev/d1/events", str(i).encode())
    i += 1
    if i == 200:
        print("ready", flush=True)
"""


def test_kill_9_mid_write_leaves_a_consistent_outbox(path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    with subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(path)], stdout=subprocess.PIPE, env=env
    ) as writer:
        assert writer.stdout is not None
        assert writer.stdout.readline() == b"ready\n"
        writer.send_signal(signal.SIGKILL)
        writer.wait()

    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    db.close()
    with Outbox(path) as box:
        items = box.pending(limit=1_000_000)
        assert len(items) >= 200
        assert [item.seq for item in items] == list(range(1, len(items) + 1))
        assert [item.payload for item in items] == [str(i).encode() for i in range(len(items))]
