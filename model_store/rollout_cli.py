"""``edgefabric rollout start|status|list|pause|resume|abort|rollback``.

The CLI writes rollouts into the registry; the controller inside ``edgefabric store serve``
acts on them at its next tick. Devices and their labels come from the device table that the
controller's fleet view keeps (the same one ``fleet status`` reads).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

from edgefabric.errors import InvalidInputError
from model_store.fleet_db import FleetDatabase, fleet_database_path
from model_store.rollout import (
    DeviceStep,
    DeviceView,
    Rollout,
    RolloutEngine,
    RolloutSpec,
    RolloutStore,
)
from model_store.store import ModelStore

__all__ = ["register_rollout", "render_rollout"]

_BAR_WIDTH = 24


def _known_devices(store: ModelStore) -> dict[str, DeviceView]:
    path = fleet_database_path(store.home)
    if not path.exists():
        return {}
    database = FleetDatabase(path, readonly=True)
    try:
        return {device: record.view() for device, record in database.load().items()}
    finally:
        database.close()


def _bar(done: int, total: int) -> str:
    filled = 0 if total == 0 else round(_BAR_WIDTH * done / total)
    return "[" + "#" * filled + "." * (_BAR_WIDTH - filled) + f"] {done}/{total}"


def render_rollout(rollout: Rollout) -> str:
    """The ``rollout status`` view: header, a progress bar per stage, the latest history."""
    spec = rollout.spec
    selector = ",".join(f"{k}={v}" for k, v in sorted(spec.selector.items())) or "(every device)"
    lines = [
        f"{rollout.id}  {spec.ref}  {rollout.phase.value}  stage {rollout.stage + 1}/"
        f"{len(spec.stages)}  selector {selector}",
        "gates: " + (", ".join(str(g) for g in spec.gates) or "none")
        + f"  bake {spec.bake_s:g}s  max failures {spec.max_failures:.0%}",
    ]  # fmt: skip
    if rollout.reason:
        lines.append(f"reason: {rollout.reason}")
    for index, fraction in enumerate(spec.stages):
        devices = [p for p in rollout.devices.values() if p.stage == index]
        done = sum(p.step is DeviceStep.INSTALLED for p in devices)
        failed = sum(p.step is DeviceStep.FAILED for p in devices)
        reverted = sum(p.step in (DeviceStep.REVERTING, DeviceStep.ROLLED_BACK) for p in devices)
        extra = f"  failed {failed}" if failed else ""
        extra += f"  reverted {reverted}" if reverted else ""
        lines.append(f"  stage {index + 1} ({fraction:.0%}) {_bar(done, len(devices))}{extra}")
    for at, text in rollout.history[-5:]:
        lines.append(f"  {time.strftime('%H:%M:%S', time.localtime(at))} {text}")
    return "\n".join(lines)


def _start(store: ModelStore, args: argparse.Namespace) -> int:
    try:
        spec = RolloutSpec.parse(
            args.target,
            selector=args.selector or "",
            stages=args.stages,
            bake=args.bake,
            gates=args.gate or (),
            max_failures=args.max_failures,
            rate=args.rate,
            canary=not args.no_canary,
        )
    except ValueError as exc:
        raise InvalidInputError(str(exc)) from None
    store.resolve(spec.ref)  # the version must exist
    fleet = _known_devices(store)
    engine = RolloutEngine()
    rollouts = RolloutStore(store.registry)
    with store.home.exclusive(), store.registry.transaction():
        existing = rollouts.list()
        conflict = engine.conflicts(existing, spec, fleet)
        if conflict:
            raise InvalidInputError(conflict)
        rollout = engine.start(rollouts.new_id(), spec, fleet, time.time())
        for other in engine.overlapping(existing, spec, fleet):
            engine.supersede(other, time.time(), by=rollout.id)
            rollouts.save(other)
        rollouts.create(rollout)
        store.record("rollout.start", rollout.id, {"target": spec.ref, "args": vars_text(args)})
    print(f"started {rollout.id}: {spec.ref}; `edgefabric rollout status {rollout.id} --watch`")
    return 0


def vars_text(args: argparse.Namespace) -> dict[str, str]:
    """The rollout's options as text, for the audit log."""
    keys = ("selector", "stages", "bake", "gate", "max_failures", "rate")
    return {key: str(getattr(args, key)) for key in keys}


def _status(store: ModelStore, args: argparse.Namespace) -> int:
    rollouts = RolloutStore(store.registry)
    print(render_rollout(rollouts.get(args.id)))
    while args.watch:
        time.sleep(args.interval_s)
        print("\033[2J\033[H" + render_rollout(rollouts.get(args.id)), flush=True)
    return 0


def _list(store: ModelStore, args: argparse.Namespace) -> int:
    rows = [
        (r.id, r.spec.ref, r.phase.value, f"{r.stage + 1}/{len(r.spec.stages)}", len(r.devices))
        for r in RolloutStore(store.registry).list()
    ]
    if not rows:
        print("no rollouts yet: `edgefabric rollout start NAME:VERSION --stages 5%,100%`")
        return 0
    headers = ("ID", "TARGET", "PHASE", "STAGE", "DEVICES")
    widths = [max(len(str(row[i])) for row in [headers, *rows]) for i in range(len(headers))]
    for row in [headers, *rows]:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return 0


def _operator(verb: str) -> Callable[[ModelStore, argparse.Namespace], int]:
    def act(store: ModelStore, args: argparse.Namespace) -> int:
        engine = RolloutEngine()
        rollouts = RolloutStore(store.registry)
        with store.home.exclusive(), store.registry.transaction():
            rollout = rollouts.get(args.id)
            if verb == "resume":
                engine.resume(rollout, time.time())
            else:
                getattr(engine, verb)(rollout, time.time(), reason=f"{verb} by {store.actor}")
            rollouts.save(rollout)
            store.record(f"rollout.{verb}", rollout.id, {"phase": rollout.phase.value})
        print(f"{rollout.id} is {rollout.phase.value}")
        return 0

    return act


def register_rollout(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    common: argparse.ArgumentParser,
    run: Callable[[Callable[[ModelStore, argparse.Namespace], int]], Callable[..., int]],
) -> None:
    """Add the ``rollout`` command group (``run`` opens the store and reports errors)."""
    group = commands.add_parser("rollout", help="staged rollouts to the fleet")
    sub = group.add_subparsers(dest="action", required=True)
    start = sub.add_parser("start", parents=[common], help="roll a version out in stages")
    start.add_argument("target", help="NAME:VERSION")
    start.add_argument("--selector", help="device labels, k=v,k2=v2 (default: every device)")
    start.add_argument("--stages", default="100%", help="cumulative stages, e.g. 5%%,25%%,100%%")
    start.add_argument("--bake", default="0", help="time each stage must stay healthy: 10m, 30s")
    start.add_argument(
        "--gate", action="append", help="selftest | install | error_rate<0.01 | p99_ms<40"
    )
    start.add_argument("--max-failures", default="0%", help="failures tolerated before rollback")
    start.add_argument("--rate", help="most new assignments per minute, e.g. 50/min")
    start.add_argument("--no-canary", action="store_true", help="absolute gates only")
    start.set_defaults(handler=run(_start))
    status = sub.add_parser("status", parents=[common], help="progress of one rollout")
    status.add_argument("id")
    status.add_argument("--watch", action="store_true", help="redraw until interrupted")
    status.add_argument("--interval-s", type=float, default=1.0, help="redraw interval")
    status.set_defaults(handler=run(_status))
    sub.add_parser("list", parents=[common], help="every rollout").set_defaults(handler=run(_list))
    for verb, text in (
        ("pause", "stop assigning and advancing"),
        ("resume", "carry on"),
        ("abort", "stop for good; devices keep their versions"),
        ("rollback", "send every touched device back to its previous version"),
    ):
        parser = sub.add_parser(verb, parents=[common], help=text)
        parser.add_argument("id")
        parser.set_defaults(handler=run(_operator(verb)))
