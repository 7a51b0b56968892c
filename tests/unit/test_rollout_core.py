"""The sans-I/O rollout engine, driven over a fake fleet with a float clock: no I/O, no sleeps."""

from __future__ import annotations

import itertools
import math
from collections import Counter
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgefabric.errors import ConflictError
from model_store.rollout import (
    Action,
    Assign,
    DeviceStep,
    DeviceView,
    Gate,
    Revert,
    Rollout,
    RolloutEngine,
    RolloutPhase,
    RolloutSpec,
    cohorts,
)

pytestmark = pytest.mark.unit

RID = "ro-0000abcd"
MODEL = "det"
NEW = 2


@dataclass
class FakeDevice:
    """A device that installs what it is told, unless the version is one it cannot run."""

    labels: dict[str, str]
    active: int | None = 1
    online: bool = True
    breaks: bool = False  # installing NEW fails (install or self-test)
    error_rate: dict[int, float] = field(default_factory=lambda: {1: 0.0, NEW: 0.0})
    p99_ms: dict[int, float] = field(default_factory=lambda: {1: 10.0, NEW: 10.0})
    desired: int | None = None
    told: bool = False
    failed: set[int] = field(default_factory=set)
    last_seen_s: float = 0.0


class FakeFleet:
    """Devices that converge on their desired state whenever they are online and report."""

    def __init__(self, devices: dict[str, FakeDevice]) -> None:
        self.devices = devices

    def apply(self, actions: list[Action]) -> None:
        for action in actions:
            device = self.devices[action.device_id]
            device.desired, device.told = action.version, True

    def report(self, now_s: float) -> None:
        for device in self.devices.values():
            if not device.online:
                continue
            device.last_seen_s = now_s
            if not device.told or device.desired == device.active:
                continue
            if device.desired == NEW and device.breaks:
                device.failed.add(NEW)
            else:
                device.active = device.desired

    def views(self) -> dict[str, DeviceView]:
        return {device_id: self._view(device_id, d) for device_id, d in self.devices.items()}

    def actives(self) -> dict[str, int | None]:
        return {device_id: d.active for device_id, d in self.devices.items()}

    @staticmethod
    def _view(device_id: str, d: FakeDevice) -> DeviceView:
        key = (MODEL, d.active or 0)
        serving = d.active is not None
        return DeviceView(
            device_id=device_id,
            labels=d.labels,
            online=d.online,
            last_seen_s=d.last_seen_s,
            active={MODEL: d.active} if d.active is not None else {},
            failed={MODEL: frozenset(d.failed)},
            requests={key: 1000} if serving else {},
            errors={key: round(1000 * d.error_rate.get(d.active or 0, 0.0))} if serving else {},
            p99_ms={key: d.p99_ms.get(d.active or 0, 0.0)} if serving else {},
            self_test={(MODEL, NEW): False} if NEW in d.failed else {},
        )


def fleet_of(n: int, **kwargs: object) -> FakeFleet:
    return FakeFleet({f"d{i:02}": FakeDevice(labels={"site": "a"}, **kwargs) for i in range(n)})  # type: ignore[arg-type]


def spec(**kwargs: object) -> RolloutSpec:
    fields: dict[str, object] = {
        "model": MODEL,
        "version": NEW,
        "selector": {"site": "a"},
        "stages": (1.0,),
        "bake_s": 0.0,
        "gates": (),
    }
    fields.update(kwargs)
    return RolloutSpec(**fields)  # type: ignore[arg-type]


def phase(rollout: Rollout) -> RolloutPhase:
    """The phase, read through a call so that mypy does not narrow it between ticks."""
    return rollout.phase


def step(rollout: Rollout, device_id: str) -> DeviceStep:
    return rollout.devices[device_id].step


def assigned(actions: list[Action]) -> set[str]:
    return {a.device_id for a in actions if isinstance(a, Assign)}


class Driver:
    """Ticks a rollout, applies its actions and lets the fleet report, one second apart."""

    def __init__(
        self, fleet: FakeFleet, the_spec: RolloutSpec, engine: RolloutEngine | None = None
    ):
        self.fleet, self.engine, self.now = fleet, engine or RolloutEngine(), 0.0
        self.rollout = self.engine.start(RID, the_spec, fleet.views(), self.now)

    def tick(self, at: float | None = None) -> list[Action]:
        self.now = self.now + 1 if at is None else at
        actions = self.engine.tick(self.rollout, self.fleet.views(), self.now)
        self.fleet.apply(actions)
        self.fleet.report(self.now + 0.5)
        return actions

    def run(self, ticks: int = 50) -> list[Action]:
        done: list[Action] = []
        for _ in range(ticks):
            done += self.tick()
        return done


# -- cohorts -----------------------------------------------------------------------------------


@given(
    ids=st.sets(st.text("abcdef0123", min_size=1, max_size=6), max_size=60),
    percents=st.lists(st.integers(1, 99), max_size=4, unique=True).map(sorted),
)
def test_cohorts_are_deterministic_cumulative_and_ceil_sized(
    ids: set[str], percents: list[int]
) -> None:
    stages = [p / 100 for p in [*percents, 100]]
    found = cohorts(RID, ids, stages)
    assert found == cohorts(RID, sorted(ids, reverse=True), stages)
    for percent, cohort in zip([*percents, 100], found, strict=True):
        assert len(cohort) == -(-percent * len(ids) // 100)  # exact ceil
    for smaller, larger in itertools.pairwise(found):
        assert smaller <= larger
    assert found[-1] == ids


def test_cohorts_give_a_small_first_stage_at_least_one_device() -> None:
    assert [len(c) for c in cohorts(RID, [f"d{i}" for i in range(7)], (0.01, 1.0))] == [1, 7]


def test_cohorts_differ_between_rollouts() -> None:
    ids = [f"d{i}" for i in range(100)]
    assert cohorts("ro-00000001", ids, (0.1, 1.0))[0] != cohorts("ro-00000002", ids, (0.1, 1.0))[0]


# -- progression -------------------------------------------------------------------------------


def test_three_stages_progress_to_completed_as_devices_report() -> None:
    fleet = fleet_of(20)
    fleet.devices["other"] = FakeDevice(labels={"site": "b"})
    the_spec = spec(stages=(0.05, 0.25, 1.0), bake_s=600.0, gates=(Gate.parse("selftest"),))
    drive = Driver(fleet, the_spec)
    expected = cohorts(RID, [f"d{i:02}" for i in range(20)], the_spec.stages)

    assert assigned(drive.tick(at=0.0)) == expected[0]
    assert phase(drive.rollout) is RolloutPhase.RUNNING
    assert drive.tick(at=1.0) == []
    assert phase(drive.rollout) is RolloutPhase.BAKING
    assert drive.tick(at=300.0) == []
    assert assigned(drive.tick(at=601.0)) == expected[1] - expected[0]
    assert (drive.rollout.phase, drive.rollout.stage) == (RolloutPhase.RUNNING, 1)
    drive.tick(at=602.0)
    assert phase(drive.rollout) is RolloutPhase.BAKING
    assert assigned(drive.tick(at=1202.0)) == expected[2] - expected[1]
    drive.tick(at=1203.0)
    assert drive.tick(at=1803.0) == []
    assert phase(drive.rollout) is RolloutPhase.COMPLETED
    assert fleet.actives() == {**{f"d{i:02}": NEW for i in range(20)}, "other": 1}
    assert drive.rollout.counts()[DeviceStep.INSTALLED] == 20
    assert [drive.rollout.counts(stage)[DeviceStep.INSTALLED] for stage in range(3)] == [1, 4, 15]


def test_zero_bake_completes_in_one_tick_per_stage() -> None:
    drive = Driver(fleet_of(10), spec(stages=(0.1, 0.5, 1.0)))
    phases = []
    for _ in range(4):
        drive.tick()
        phases.append((drive.rollout.phase, drive.rollout.stage))
    assert phases[-1] == (RolloutPhase.COMPLETED, 2)
    assert phases[:3] == [
        (RolloutPhase.RUNNING, 0),
        (RolloutPhase.RUNNING, 1),
        (RolloutPhase.RUNNING, 2),
    ]


def test_ticking_again_with_the_same_fleet_emits_nothing() -> None:
    fleet = fleet_of(10)
    engine = RolloutEngine()
    rollout = engine.start(RID, spec(stages=(0.5, 1.0)), fleet.views(), 0.0)
    first = engine.tick(rollout, fleet.views(), 1.0)
    assert len(first) == 5
    assert engine.tick(rollout, fleet.views(), 1.0) == []
    assert engine.tick(rollout, fleet.views(), 2.0) == []  # nobody reported: nothing new to do
    assert engine.desired_actions(rollout) == sorted(first, key=lambda a: a.device_id)


# -- failures and rollback ---------------------------------------------------------------------


def test_failures_beyond_the_budget_roll_every_touched_device_back_to_its_own_version() -> None:
    fleet = fleet_of(10)
    fleet.devices["d01"].active = None  # never had the model: reverting removes it
    fleet.devices["d02"].active = 3
    fleet.devices["d03"].breaks = fleet.devices["d04"].breaks = True
    before = fleet.actives()
    drive = Driver(fleet, spec(max_failures=0.1))
    drive.tick()
    reverts = drive.tick()
    assert phase(drive.rollout) is RolloutPhase.ROLLING_BACK
    assert "2 of 10 devices failed, more than the 1 allowed" in drive.rollout.reason
    assert set(reverts) == {Revert(d, MODEL, v) for d, v in before.items()}
    drive.tick()
    assert phase(drive.rollout) is RolloutPhase.ROLLED_BACK
    assert fleet.actives() == before
    assert drive.rollout.counts()[DeviceStep.ROLLED_BACK] == 10
    assert drive.engine.desired_actions(drive.rollout) == sorted(reverts, key=lambda a: a.device_id)


def test_failures_within_the_budget_let_the_rollout_go_on() -> None:
    fleet = fleet_of(10)
    fleet.devices["d05"].breaks = True
    drive = Driver(fleet, spec(stages=(0.5, 1.0), max_failures=0.1))
    drive.run(10)
    assert phase(drive.rollout) is RolloutPhase.COMPLETED
    assert step(drive.rollout, "d05") is DeviceStep.FAILED
    assert drive.rollout.devices["d05"].reason == f"reported {MODEL}:{NEW} FAILED"
    assert drive.rollout.counts()[DeviceStep.INSTALLED] == 9


def test_a_gate_failing_while_baking_rolls_back() -> None:
    fleet = fleet_of(10)
    fleet.devices["d07"].error_rate[NEW] = 0.2
    drive = Driver(fleet, spec(bake_s=60.0, gates=(Gate.parse("error_rate<0.05"),), canary=False))
    drive.run(3)
    assert phase(drive.rollout) is RolloutPhase.ROLLED_BACK
    assert drive.rollout.devices["d07"].reason == (
        "error rate 0.2 over 1000 requests is not below 0.05"
    )


def test_a_failed_self_test_fails_the_device_when_the_gate_is_set() -> None:
    fleet = fleet_of(4)
    fleet.devices["d00"].breaks = True
    drive = Driver(fleet, spec(gates=(Gate.parse("selftest"),), max_failures=0.5))
    drive.run(3)
    assert step(drive.rollout, "d00") is DeviceStep.FAILED


def test_a_failure_reported_before_the_assignment_is_not_held_against_it() -> None:
    fleet = fleet_of(2)
    fleet.devices["d00"].failed = {NEW}  # left over from an earlier attempt
    fleet.devices["d00"].last_seen_s = 5.0
    engine = RolloutEngine()
    rollout = engine.start(RID, spec(max_failures=0.5), fleet.views(), 10.0)
    engine.tick(rollout, fleet.views(), 10.0)
    assert step(rollout, "d00") is DeviceStep.ASSIGNED
    fleet.devices["d00"].last_seen_s = 11.0
    engine.tick(rollout, fleet.views(), 11.0)
    assert step(rollout, "d00") is DeviceStep.FAILED


@pytest.mark.parametrize(
    ("gate", "old", "new"),
    [
        ("p99_ms<100", {"p99_ms": 10.0}, {"p99_ms": 20.0}),
        ("error_rate<0.1", {"error_rate": 0.01}, {"error_rate": 0.05}),
    ],
)
def test_the_canary_catches_a_regression_the_absolute_threshold_misses(
    gate: str, old: dict[str, float], new: dict[str, float]
) -> None:
    outcomes = {}
    for canary in (True, False):
        fleet = fleet_of(20)
        for device in fleet.devices.values():
            for metric, value in old.items():
                getattr(device, metric)[1] = value
            for metric, value in new.items():
                getattr(device, metric)[NEW] = value
        drive = Driver(fleet, spec(stages=(0.1, 1.0), gates=(Gate.parse(gate),), canary=canary))
        drive.run(6)
        outcomes[canary] = drive.rollout
    assert phase(outcomes[False]) is RolloutPhase.COMPLETED
    assert phase(outcomes[True]) is RolloutPhase.ROLLED_BACK
    reasons = [p.reason for p in outcomes[True].devices.values() if p.reason]
    assert reasons
    assert all("the 18 devices still on the old version" in r for r in reasons)


def test_the_last_stage_has_no_baseline_and_judges_absolute_gates_only() -> None:
    fleet = fleet_of(5)
    for device in fleet.devices.values():
        device.p99_ms[NEW] = 30.0
    drive = Driver(fleet, spec(gates=(Gate.parse("p99_ms<40"),)))
    drive.run(3)
    assert phase(drive.rollout) is RolloutPhase.COMPLETED


def test_an_idle_model_is_not_judged_on_its_metrics() -> None:
    fleet = fleet_of(4)
    engine = RolloutEngine()
    rollout = engine.start(RID, spec(gates=(Gate.parse("p99_ms<40"),)), fleet.views(), 0.0)
    engine.tick(rollout, fleet.views(), 0.0)
    views = {
        d: DeviceView(d, {"site": "a"}, True, 1.0, {MODEL: NEW}, p99_ms={(MODEL, NEW): 90.0})
        for d in fleet.devices
    }
    engine.tick(rollout, views, 1.0)
    assert phase(rollout) is RolloutPhase.COMPLETED


# -- operator commands -------------------------------------------------------------------------


def test_pause_stops_assigning_and_resume_carries_on() -> None:
    drive = Driver(fleet_of(10), spec(stages=(0.2, 1.0), bake_s=100.0))
    drive.tick(at=0.0)
    drive.engine.pause(drive.rollout, 1.0)
    assert drive.tick(at=200.0) == []
    assert phase(drive.rollout) is RolloutPhase.PAUSED
    drive.engine.resume(drive.rollout, 201.0)
    assert phase(drive.rollout) is RolloutPhase.RUNNING
    drive.tick(at=202.0)
    assert phase(drive.rollout) is RolloutPhase.BAKING
    drive.engine.pause(drive.rollout, 210.0)
    drive.engine.resume(drive.rollout, 400.0)
    assert drive.rollout.bake_started_s == 400.0  # the bake starts over
    assert drive.tick(at=450.0) == []
    assert len(drive.tick(at=500.0)) == 8


def test_failures_while_paused_still_roll_back() -> None:
    fleet = fleet_of(4)
    fleet.devices["d00"].breaks = fleet.devices["d01"].breaks = True
    drive = Driver(fleet, spec())
    drive.tick()
    drive.engine.pause(drive.rollout, drive.now)
    assert len(drive.tick()) == 4
    assert phase(drive.rollout) is RolloutPhase.ROLLING_BACK


def test_abort_stops_and_keeps_versions() -> None:
    fleet = fleet_of(10)
    drive = Driver(fleet, spec(stages=(0.5, 1.0), bake_s=100.0))
    drive.run(2)
    drive.engine.abort(drive.rollout, drive.now)
    assert drive.run(5) == []
    assert phase(drive.rollout) is RolloutPhase.ABORTED
    assert Counter(fleet.actives().values()) == {1: 5, NEW: 5}


def test_manual_rollback_reverts_a_completed_rollout() -> None:
    fleet = fleet_of(3)
    drive = Driver(fleet, spec())
    drive.run(2)
    reverts = drive.engine.rollback(drive.rollout, drive.now, reason="bad outputs")
    assert drive.rollout.reason == "rolling back: bad outputs"
    drive.fleet.apply(reverts)
    drive.fleet.report(drive.now)
    drive.tick()
    assert phase(drive.rollout) is RolloutPhase.ROLLED_BACK
    assert set(fleet.actives().values()) == {1}


@pytest.mark.parametrize(
    ("command", "phase", "message"),
    [
        ("resume", RolloutPhase.RUNNING, "resume applies while it is PAUSED"),
        ("pause", RolloutPhase.PAUSED, "pause applies while it is RUNNING or BAKING"),
        ("pause", RolloutPhase.COMPLETED, "pause applies while it is RUNNING or BAKING"),
        (
            "abort",
            RolloutPhase.COMPLETED,
            "abort applies while it is RUNNING, BAKING, PAUSED or ROLLING_BACK",
        ),
        (
            "rollback",
            RolloutPhase.ROLLED_BACK,
            "rollback applies while it is RUNNING, BAKING, PAUSED or COMPLETED",
        ),
        ("rollback", RolloutPhase.ABORTED, "rollback applies while"),
    ],
)
def test_illegal_commands_are_refused_with_what_is_allowed(
    command: str, phase: RolloutPhase, message: str
) -> None:
    engine = RolloutEngine()
    rollout = engine.start(RID, spec(), fleet_of(1).views(), 0.0)
    rollout.phase = phase
    with pytest.raises(ConflictError) as caught:
        getattr(engine, command)(rollout, 1.0)
    assert str(caught.value).startswith(f"cannot {command} rollout {RID}: it is {phase}; ")
    assert message in str(caught.value)


def test_start_refuses_a_selector_that_matches_nothing() -> None:
    with pytest.raises(ConflictError, match=r"selector site=z matches none of the 3 known devices"):
        RolloutEngine().start(RID, spec(selector={"site": "z"}), fleet_of(3).views(), 0.0)


# -- rate, offline devices, late joiners -------------------------------------------------------


def test_the_rate_limits_new_assignments_per_minute() -> None:
    drive = Driver(fleet_of(10), spec(rate_per_min=3))
    assert len(drive.tick(at=0.0)) == 3
    assert drive.tick(at=30.0) == []
    assert phase(drive.rollout) is RolloutPhase.RUNNING  # not settled while devices wait
    assert len(drive.tick(at=60.0)) == 3
    assert len(drive.tick(at=120.0)) == 3
    assert len(drive.tick(at=180.0)) == 1
    drive.tick(at=181.0)
    assert phase(drive.rollout) is RolloutPhase.COMPLETED


def test_an_offline_device_is_assigned_not_waited_for_and_counted_when_back() -> None:
    fleet = fleet_of(5)
    fleet.devices["d03"].online = False
    drive = Driver(fleet, spec(stages=(0.6, 1.0)))
    sent = drive.run(3)
    assert "d03" in assigned(sent)
    assert phase(drive.rollout) is RolloutPhase.COMPLETED
    assert step(drive.rollout, "d03") is DeviceStep.ASSIGNED
    fleet.devices["d03"].online = True
    fleet.report(drive.now + 1)
    assert drive.tick() == []
    assert step(drive.rollout, "d03") is DeviceStep.INSTALLED
    assert fleet.devices["d03"].active == NEW


def test_an_offline_device_that_returns_broken_counts_against_the_budget() -> None:
    fleet = fleet_of(10)
    first = cohorts(RID, fleet.devices, (0.5, 1.0))[0]
    late = min(first)
    fleet.devices[late].online = False
    fleet.devices[late].breaks = True
    drive = Driver(fleet, spec(stages=(0.5, 1.0), bake_s=1000.0))
    drive.run(3)
    assert phase(drive.rollout) is RolloutPhase.BAKING
    fleet.devices[late].online = True
    drive.run(3)
    assert phase(drive.rollout) is RolloutPhase.ROLLED_BACK


def test_a_device_that_joins_later_gets_the_version_of_a_completed_rollout() -> None:
    fleet = fleet_of(3)
    drive = Driver(fleet, spec())
    drive.run(2)
    assert phase(drive.rollout) is RolloutPhase.COMPLETED
    fleet.devices["new"] = FakeDevice(labels={"site": "a"}, active=None)
    fleet.devices["elsewhere"] = FakeDevice(labels={"site": "b"})
    assert drive.tick() == [Assign("new", MODEL, NEW)]
    assert drive.tick() == []
    assert fleet.devices["new"].active == NEW
    assert phase(drive.rollout) is RolloutPhase.COMPLETED


def test_a_device_that_joins_a_rolled_back_rollout_gets_nothing() -> None:
    fleet = fleet_of(2)
    fleet.devices["d00"].breaks = True
    drive = Driver(fleet, spec())
    drive.run(3)
    assert phase(drive.rollout) is RolloutPhase.ROLLED_BACK
    fleet.devices["new"] = FakeDevice(labels={"site": "a"})
    assert drive.run(2) == []


# -- conflicts ---------------------------------------------------------------------------------


def test_a_second_rollout_of_the_model_to_overlapping_devices_is_refused() -> None:
    fleet = fleet_of(3)
    engine = RolloutEngine()
    running = engine.start(RID, spec(selector={}), fleet.views(), 0.0)
    message = engine.conflicts([running], spec(version=3), fleet.views())
    assert message == (
        f"rollout {RID} ({MODEL}:2, RUNNING, selector (every device)) is already rolling out "
        f"{MODEL} to devices that selector site=a also matches (e.g. d00); wait until it "
        f"completes, or abort or roll back {RID} first"
    )
    other_model = spec(model="seg", selector={})
    assert engine.conflicts([running], other_model, fleet.views()) is None


def test_disjoint_selectors_do_not_conflict_until_a_touched_device_moves() -> None:
    fleet = fleet_of(2)
    fleet.devices["b0"] = FakeDevice(labels={"site": "b"})
    engine = RolloutEngine()
    running = engine.start(RID, spec(), fleet.views(), 0.0)
    engine.tick(running, fleet.views(), 0.0)
    site_b = spec(selector={"site": "b"}, version=3)
    assert engine.conflicts([running], site_b, fleet.views()) is None
    fleet.devices["d01"].labels = {"site": "b"}
    assert "(e.g. d01)" in (engine.conflicts([running], site_b, fleet.views()) or "")


def test_selectors_that_could_share_a_future_device_conflict() -> None:
    fleet = fleet_of(2)
    engine = RolloutEngine()
    running = engine.start(RID, spec(), fleet.views(), 0.0)
    cameras = spec(selector={"class": "camera"}, version=3)
    assert "also matches; wait" in (engine.conflicts([running], cameras, fleet.views()) or "")


def test_a_completed_rollout_does_not_conflict_and_can_be_superseded() -> None:
    fleet = fleet_of(2)
    drive = Driver(fleet, spec())
    drive.run(2)
    newer = spec(version=3)
    assert drive.engine.conflicts([drive.rollout], newer, fleet.views()) is None
    assert drive.engine.overlapping([drive.rollout], newer, fleet.views()) == [drive.rollout]
    drive.engine.supersede(drive.rollout, drive.now, by="ro-11111111")
    assert phase(drive.rollout) is RolloutPhase.SUPERSEDED
    fleet.devices["new"] = FakeDevice(labels={"site": "a"})
    assert drive.run(2) == []


# -- restarts ----------------------------------------------------------------------------------


def test_the_json_form_round_trips() -> None:
    fleet = fleet_of(6)
    fleet.devices["d01"].active = None
    drive = Driver(fleet, spec(stages=(0.5, 1.0), bake_s=10.0, gates=(Gate.parse("p99_ms<40"),)))
    drive.tick()
    drive.engine.pause(drive.rollout, drive.now)
    assert Rollout.from_json(drive.rollout.to_json()) == drive.rollout


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[]", "rollout state is not a JSON object"),
        ("{", "rollout state is not JSON"),
        ('{"format": 9}', "rollout state has format 9, not 1"),
        ('{"format": 1}', "rollout state is incomplete or malformed"),
    ],
)
def test_damaged_json_is_refused(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Rollout.from_json(text)


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[FakeFleet, RolloutSpec]:
    n = draw(st.integers(1, 16))
    devices: dict[str, FakeDevice] = {}
    for i in range(n):
        device = FakeDevice(
            labels={"site": draw(st.sampled_from(["a", "a", "b"]))},
            active=draw(st.sampled_from([1, 1, None])),
            online=draw(st.booleans()) or i == 0,
            breaks=draw(st.booleans()) and i % 3 == 0,
        )
        device.error_rate[NEW] = draw(st.sampled_from([0.0, 0.0, 0.2]))
        devices[f"d{i:02}"] = device
    devices["d00"].labels = {"site": "a"}
    the_spec = spec(
        stages=draw(st.sampled_from([(1.0,), (0.25, 1.0), (0.1, 0.5, 1.0)])),
        bake_s=draw(st.sampled_from([0.0, 30.0])),
        gates=(Gate.parse("error_rate<0.1"), Gate.parse("selftest")),
        max_failures=draw(st.sampled_from([0.0, 0.2, 0.5])),
        rate_per_min=draw(st.sampled_from([None, 2, 5])),
    )
    return FakeFleet(devices), the_spec


def run_to_the_end(
    fleet: FakeFleet, the_spec: RolloutSpec, crashes: list[tuple[bool, int, int]]
) -> tuple[RolloutPhase, dict[str, int | None]]:
    """Tick every 10 s; a crash loses part of a tick's actions and stops ticks for a while."""
    engine = RolloutEngine()
    rollout = engine.start(RID, the_spec, fleet.views(), 0.0)
    now, down, saved = 0.0, 0, rollout.to_json()
    for step in range(400):
        now += 10.0
        fleet.report(now - 5.0)
        if down:
            down -= 1
            if not down:  # restart from what was saved, then re-send the desired state
                rollout = Rollout.from_json(saved)
                fleet.apply(engine.desired_actions(rollout))
            continue
        actions = engine.tick(rollout, fleet.views(), now)
        assert engine.tick(rollout, fleet.views(), now) == []
        saved = rollout.to_json()  # write-ahead: saved before acting
        crash, sent, pause = crashes[step] if step < len(crashes) else (False, 0, 0)
        fleet.apply(actions[: sent if crash else None])
        down = pause + 1 if crash else 0
        if rollout.phase in (RolloutPhase.COMPLETED, RolloutPhase.ROLLED_BACK) and not down:
            break
    return rollout.phase, fleet.actives()


@settings(max_examples=60, deadline=None)
@given(
    scenario=scenarios(),
    crashes=st.lists(st.tuples(st.booleans(), st.integers(0, 8), st.integers(0, 3)), max_size=30),
)
def test_a_controller_restarted_anywhere_reaches_the_same_outcome(
    scenario: tuple[FakeFleet, RolloutSpec], crashes: list[tuple[bool, int, int]]
) -> None:
    fleet, the_spec = scenario
    twin = FakeFleet({d: FakeDevice(**vars(dev)) for d, dev in fleet.devices.items()})
    for device in twin.devices.values():
        device.error_rate, device.failed = dict(device.error_rate), set(device.failed)
    calm = run_to_the_end(fleet, the_spec, [])
    restarted = run_to_the_end(twin, the_spec, crashes)
    assert calm[0] in (RolloutPhase.COMPLETED, RolloutPhase.ROLLED_BACK)
    assert restarted == calm


@settings(max_examples=40, deadline=None)
@given(scenario=scenarios(), restarts=st.lists(st.booleans(), min_size=40, max_size=40))
def test_a_json_round_trip_between_ticks_changes_nothing(
    scenario: tuple[FakeFleet, RolloutSpec], restarts: list[bool]
) -> None:
    fleet, the_spec = scenario
    engine = RolloutEngine()
    rollout = engine.start(RID, the_spec, fleet.views(), 0.0)
    twin = Rollout.from_json(rollout.to_json())
    for step, restart in enumerate(restarts):
        now = 10.0 * (step + 1)
        if restart:
            twin = Rollout.from_json(twin.to_json())
        views = fleet.views()
        actions = engine.tick(rollout, views, now)
        assert engine.tick(twin, views, now) == actions
        assert twin == rollout
        fleet.apply(actions)
        fleet.report(now + 1)
    assert math.isfinite(rollout.stage_started_s)
