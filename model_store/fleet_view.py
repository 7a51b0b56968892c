"""The fleet as devices report it: live from MQTT, in memory, and in the device table.

:class:`FleetView` subscribes one connected :class:`~edgefabric.mqtt.MqttClient` to every
device's status, health and events, folds each report into that device's record
(:mod:`model_store.fleet_records`) and hands the rollout engine a :class:`DeviceView` per
device. A background thread writes changed records to the device table
(:mod:`model_store.fleet_db`) every ``flush_interval_s``, so ``fleet status`` can show, after a
controller restart, devices last seen while it was down. Garbage payloads are logged and dropped.

Threading: reports are folded in on the MQTT network thread under one lock, which every reader
takes too; :meth:`FleetView.wait_for` waits on a condition of that lock, so nothing polls.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from edgefabric import topics
from edgefabric.errors import EdgefabricError, TransportError
from edgefabric.mqtt import BrokerAddress, Message, MqttClient
from edgefabric.security.flags import add_mqtt_tls_arguments
from model_store.enroll import mqtt_tls_from
from model_store.fleet_db import FleetDatabase, fleet_database_path
from model_store.fleet_records import (
    DeviceRecord,
    DeviceRow,
    ModelRow,
    Report,
    decode,
    selects,
)
from model_store.home import StoreHome
from model_store.rollout.core import DeviceView
from model_store.rollout.spec import format_selector, parse_selector

__all__ = ["FleetView", "ReportListener", "read_rows", "register_fleet_status"]

logger = logging.getLogger(__name__)

ReportListener = Callable[[str, Report, float, bool], None]
"""``(device_id, report, received_s, retained)``: see :meth:`FleetView.add_listener`."""

_FILTERS = (topics.ALL_DEVICE_STATUS, topics.ALL_DEVICE_HEALTH, topics.ALL_DEVICE_EVENTS)
_RECHECK_S = 0.01  # wait_for lets a burst of reports land before evaluating again
_WATCH_REFRESH_S = 30.0  # --watch redraws at least this often ("last seen" ages)


class FleetView:
    """Every device's last report. ``start()`` after ``mqtt.connect()``; ``stop()`` before
    closing the client.

    ``database``: the device table to load at start and keep up to date (None: memory only;
    ``readonly``: load it but never write). ``stale_after_s``: report a device offline when
    nothing was heard from it for that long, even if its status says online (None: trust the
    status, whose Last Will the broker sends). ``clock`` gives Unix time in seconds.
    """

    def __init__(
        self,
        mqtt: MqttClient,
        database: Path | None = None,
        *,
        readonly: bool = False,
        flush_interval_s: float = 0.5,
        stale_after_s: float | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not flush_interval_s > 0:
            raise ValueError(f"flush_interval_s must be positive, got {flush_interval_s}")
        self._mqtt = mqtt
        self._database_path = database
        self._readonly = readonly
        self._flush_interval_s = flush_interval_s
        self._stale_after_s = stale_after_s
        self._clock = clock
        self._changed = threading.Condition(threading.RLock())
        self._records: dict[str, DeviceRecord] = {}
        self._views: dict[str, DeviceView] = {}
        self._stale_views: set[str] = set()
        self._unsaved: set[str] = set()
        self._generation = 0
        self._dropped = 0
        self._missed = 0
        self._db: FleetDatabase | None = None
        self._stop_flusher = threading.Event()
        self._flush_lock = threading.Lock()
        self._flusher: threading.Thread | None = None
        self._started = False
        self._listeners: list[ReportListener] = []

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Load the device table, start writing it, and subscribe to the fleet's reports."""
        with self._changed:
            if self._started:
                raise RuntimeError("the fleet view was started already")
            self._started = True
        if self._database_path is not None:
            db = FleetDatabase(self._database_path, readonly=self._readonly)
            loaded = db.load()
            with self._changed:
                for device_id, record in loaded.items():
                    self._records.setdefault(device_id, record)
                    self._stale_views.add(device_id)
                self._generation += 1
            if self._readonly:
                db.close()
            else:
                self._db = db
                self._flusher = threading.Thread(
                    target=self._flush_loop, name="fleet-view-flush", daemon=True
                )
                self._flusher.start()
        try:
            for topic_filter in _FILTERS:
                self._mqtt.subscribe(topic_filter, self._received, qos=1)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Unsubscribe, write what is unsaved and close the table (idempotent)."""
        for topic_filter in _FILTERS:
            try:  # forgotten by the client even while disconnected
                self._mqtt.unsubscribe(topic_filter)
            except TransportError as error:
                logger.info("unsubscribing from %s: %s", topic_filter, error)
        flusher, self._flusher = self._flusher, None
        if flusher is not None:
            self._stop_flusher.set()
            flusher.join()
        with self._flush_lock:
            db, self._db = self._db, None
        if db is not None:
            db.close()
        with self._changed:
            self._changed.notify_all()

    def add_listener(self, listener: ReportListener) -> None:
        """Also hand every decoded report to ``listener(device_id, report, received_s,
        retained)``, on the MQTT network thread after it was folded in (keep it quick).
        Add listeners before :meth:`start`; an exception in one is logged, not raised."""
        self._listeners.append(listener)

    def __enter__(self) -> FleetView:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- reading ---------------------------------------------------------------------------

    def devices(self, now_s: float | None = None) -> dict[str, DeviceView]:
        """Every known device's view at ``now_s`` (default: the clock)."""
        with self._changed:
            for device_id in self._stale_views:
                self._views[device_id] = self._records[device_id].view()
            self._stale_views.clear()
            stale_after_s = self._stale_after_s
            if stale_after_s is None:
                return dict(self._views)
            now = self._clock() if now_s is None else now_s
            return {
                device_id: (
                    dataclasses.replace(view, online=False)
                    if view.online and now - view.last_seen_s > stale_after_s
                    else view
                )
                for device_id, view in self._views.items()
            }

    def rows(self, selector: Mapping[str, str] | None = None) -> list[DeviceRow]:
        """``fleet status`` rows of the devices whose labels match ``selector``, by device id."""
        with self._changed:
            records = [self._records[d] for d in sorted(self._records)]
            return [r.row() for r in records if selects(selector or {}, r.labels)]

    def reconciled_sequences(self) -> dict[str, int]:
        """Per device, the newest desired-state sequence it reported RECONCILED (0: none)."""
        with self._changed:
            return {d: r.reconciled_sequence for d, r in self._records.items()}

    @property
    def generation(self) -> int:
        """A counter that grows with every report folded in (and with the table's load)."""
        return self._generation

    @property
    def dropped(self) -> int:
        """How many garbage messages were dropped since start."""
        return self._dropped

    def wait_for(
        self, predicate: Callable[[dict[str, DeviceView]], bool], timeout_s: float
    ) -> bool:
        """Wait until ``predicate(devices())`` holds; False when ``timeout_s`` passed first.

        The predicate runs under the view's lock (keep it quick; it may call the view's other
        methods). It is evaluated when reports arrive, at most every 10 ms.
        """
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while True:
                checked_at = time.monotonic()
                if predicate(self.devices()):
                    return True
                if checked_at >= deadline:
                    return False
                self._changed.wait(deadline - checked_at)  # notified by every report
                while (pause := min(checked_at + _RECHECK_S, deadline) - time.monotonic()) > 0:
                    self._changed.wait(pause)

    # -- the MQTT network thread -------------------------------------------------------------

    def _received(self, message: Message) -> None:
        if not message.payload:
            logger.debug("ignoring an empty (cleared) message on %s", message.topic)
            return
        try:
            device_id, report = decode(message.topic, message.payload)
        except ValueError as error:
            self._dropped += 1
            logger.warning("dropped a fleet message (%d so far): %s", self._dropped, error)
            return
        received_s = self._clock()
        with self._changed:
            record = self._records.get(device_id)
            if record is None:
                record = self._records[device_id] = DeviceRecord(device_id)
            missed = record.apply(report, received_s=received_s, retained=message.retain)
            self._stale_views.add(device_id)
            self._unsaved.add(device_id)
            self._generation += 1
            self._changed.notify_all()
        for listener in self._listeners:
            try:
                listener(device_id, report, received_s, message.retain)
            except Exception:
                logger.exception("a fleet report listener failed on %s", message.topic)
        if missed:
            self._missed += missed
            logger.log(
                logging.DEBUG if self._missed > missed else logging.WARNING,
                "%d events from %s were lost on the way (%d in all; a broker queue limit, "
                "such as mosquitto's max_queued_messages, may be too low for the fleet)",
                missed,
                device_id,
                self._missed,
            )

    # -- the flush thread --------------------------------------------------------------------

    def _flush_loop(self) -> None:
        while not self._stop_flusher.wait(self._flush_interval_s):
            self._flush()
        self._flush()

    def flush(self) -> None:
        """Write pending device records to the table now (the CLI reads the table)."""
        self._flush()

    def _flush(self) -> None:
        with self._flush_lock:  # the flush thread and flush() share one connection
            self._flush_locked()

    def _flush_locked(self) -> None:
        db = self._db
        if db is None:
            return
        with self._changed:
            unsaved, self._unsaved = self._unsaved, set()
            rows = [
                (d, r.online, r.last_seen_s, r.to_json())
                for d in unsaved
                for r in (self._records[d],)
            ]
        try:
            db.save(rows)
        except OSError as error:
            logger.error("could not save %d device records (will retry): %s", len(rows), error)
            with self._changed:
                self._unsaved |= unsaved


def read_rows(path: Path, selector: Mapping[str, str] | None = None) -> list[DeviceRow]:
    """``fleet status`` rows from a device table on disk (OSError when it cannot be read)."""
    if not path.exists():
        raise OSError(
            f"no device table at {path}: the controller (`edgefabric store serve`) writes it "
            "once it runs; pass --home if the store lives elsewhere"
        )
    db = FleetDatabase(path, readonly=True)
    try:
        records = db.load()
    finally:
        db.close()
    return [records[d].row() for d in sorted(records) if selects(selector or {}, records[d].labels)]


# ---------------------------------------------------------------------- fleet status (CLI)


def register_fleet_status(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``fleet status`` to the ``fleet`` command group."""
    status = sub.add_parser(
        "status", help="every device: online, last seen, versions per model, health"
    )
    status.add_argument("--home", type=Path, help="store folder (default $EDGEFABRIC_HOME)")
    status.add_argument(
        "--selector", default="", help="key=value,... labels every listed device has"
    )
    status.add_argument("--json", action="store_true", help="one JSON object per device")
    status.add_argument("--watch", action="store_true", help="redraw until interrupted")
    status.add_argument(
        "--interval-s", type=float, default=2.0, help="seconds between redraws (--watch)"
    )
    status.add_argument(
        "--broker",
        help="mqtt[s]://HOST:PORT: also listen to the devices live, not only the saved table",
    )
    add_mqtt_tls_arguments(status)
    status.add_argument(
        "--listen-s", type=float, default=1.0, help="with --broker: listen this long first"
    )
    status.set_defaults(handler=_status)


def _status(args: argparse.Namespace) -> int:
    try:
        selector = parse_selector(args.selector)
    except ValueError as error:
        print(f"error: --selector: {error}", file=sys.stderr)
        return 2
    if not args.broker and (args.mqtt_ca or args.mqtt_cert or args.mqtt_key):
        print(
            "error: --mqtt-ca/--mqtt-cert/--mqtt-key are for listening live: give "
            "--broker mqtts://HOST:PORT too",
            file=sys.stderr,
        )
        return 2
    path = fleet_database_path(StoreHome.from_env(args.home))
    try:
        if args.broker:
            return _status_live(args, path, selector)
        while True:
            _print(read_rows(path, selector), selector, args)
            if not args.watch:
                return 0
            time.sleep(args.interval_s)  # a display refresh, not a synchronisation
    except (OSError, EdgefabricError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0


def _status_live(args: argparse.Namespace, path: Path, selector: Mapping[str, str]) -> int:
    client_id = f"edgefabric-status-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    with (
        MqttClient(BrokerAddress.parse(args.broker), client_id, tls=mqtt_tls_from(args)) as mqtt,
        FleetView(mqtt, path if path.exists() else None, readonly=True) as view,
    ):
        time.sleep(args.listen_s)  # listening: the broker replays every retained status
        while True:
            _print(view.rows(selector), selector, args)
            if not args.watch:
                return 0
            seen = view.generation
            time.sleep(args.interval_s)  # at most one redraw per interval
            view.wait_for(_changed_since(view, seen), _WATCH_REFRESH_S)


def _changed_since(view: FleetView, generation: int) -> Callable[[object], bool]:
    return lambda _: view.generation != generation


def _print(
    rows: Sequence[DeviceRow], selector: Mapping[str, str], args: argparse.Namespace
) -> None:
    if args.json:
        for row in rows:
            print(json.dumps(_row_json(row)), flush=True)
        return
    if args.watch and sys.stdout.isatty():
        print("\x1b[H\x1b[2J", end="")
    print(render(rows, selector, now_s=time.time()), flush=True)


def render(rows: Sequence[DeviceRow], selector: Mapping[str, str], *, now_s: float) -> str:
    """The ``fleet status`` table, one line per device and model, with a summary line."""
    headers = ("DEVICE", "ONLINE", "LAST SEEN", "MODEL", "ACTIVE", "PREVIOUS", "REQUESTS",
               "ERRORS", "P99 MS", "SELF-TEST", "FAILED")  # fmt: skip
    lines: list[tuple[str, ...]] = []
    for row in rows:
        device = (row.device_id, "yes" if row.online else "no", _age(row.last_seen_s, now_s))
        models = row.models or (None,)
        for index, model in enumerate(models):
            lead = device if index == 0 else ("", "", "")
            lines.append(lead + _model_cells(model))
    online = sum(row.online for row in rows)
    matching = f" matching {format_selector(selector)}" if selector else ""
    summary = f"{len(rows)} devices{matching}, {online} online"
    return _table(headers, lines) + "\n" + summary


def _model_cells(model: ModelRow | None) -> tuple[str, ...]:
    if model is None:
        return ("-",) * 8
    rate = model.error_rate
    return (
        model.model,
        _opt(model.active),
        _opt(model.previous),
        str(model.requests),
        f"{model.errors} ({rate:.1%})" if rate is not None else str(model.errors),
        f"{model.p99_ms:.1f}" if model.p99_ms is not None else "-",
        {True: "passed", False: "FAILED", None: "-"}[model.self_test],
        ",".join(map(str, model.failed)) or "-",
    )


def _opt(value: int | None) -> str:
    return "-" if value is None else str(value)


def _age(last_seen_s: float, now_s: float) -> str:
    if last_seen_s <= 0:
        return "never"
    seconds = max(0.0, now_s - last_seen_s)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit} ago"
    return f"{int(seconds)}s ago"


def _table(headers: Sequence[str], lines: Sequence[Sequence[str]]) -> str:
    cells = [list(headers), *[list(line) for line in lines]]
    widths = [max(len(line[i]) for line in cells) for i in range(len(headers))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in cells
    )


def _row_json(row: DeviceRow) -> dict[str, object]:
    data = dataclasses.asdict(row)
    data["labels"] = dict(row.labels)
    data["models"] = [dict(dataclasses.asdict(m), error_rate=m.error_rate) for m in row.models]
    return data
