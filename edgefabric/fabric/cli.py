"""``edgefabric up``: the whole fabric on one machine, in the foreground, until Ctrl-C."""

from __future__ import annotations

import argparse
import signal
import tempfile
import threading
from pathlib import Path
from types import FrameType

from edgefabric.fabric.local import MODEL, FabricOptions, LocalFabric

__all__ = ["register"]

_REFRESH_S = 2.0


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``up`` command."""
    up = commands.add_parser(
        "up", help="run broker, store, gateway and edge agents locally until Ctrl-C"
    )
    up.add_argument("--agents", type=int, default=3, help="edge agents to start (default 3)")
    up.add_argument("--work-dir", type=Path, help="where everything keeps its files (default: tmp)")
    up.add_argument(
        "--edge-weight", type=float, default=0.5, help="share of requests routed to the agents"
    )
    up.set_defaults(handler=_up)


def _up(args: argparse.Namespace) -> int:
    stop = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, request_stop)
    with tempfile.TemporaryDirectory(prefix="edgefabric-up-") as tmp:
        options = FabricOptions(
            work_dir=args.work_dir or Path(tmp), agents=args.agents, edge_weight=args.edge_weight
        )
        print(f"starting a local fabric with {args.agents} agents in {options.work_dir}")
        with LocalFabric(options) as fabric:
            print(f"broker   {fabric.broker_url}")
            print(f"store    EDGEFABRIC_HOME={fabric.home}")
            print(f"gateway  {fabric.gateway_endpoint}  (KServe v2 gRPC; try tritonclient)")
            print(f"dashboard {fabric.dashboard_url}")
            summary = fabric.rollout(1)
            print(f"rollout of {MODEL}:1 to the agents: {summary['phase']}")
            print("Ctrl-C stops everything")
            shown = ""
            while not stop.is_set():
                view = _status(fabric)
                if view != shown:
                    print(view, flush=True)
                    shown = view
                stop.wait(_REFRESH_S)
            print("stopping ...", flush=True)
            codes = fabric.stop()
        print("stopped: " + ", ".join(f"{name} {code}" for name, code in codes.items()))
    return 0


def _status(fabric: LocalFabric) -> str:
    down = [name for name, agent in fabric.agents.items() if not agent.running]
    versions = fabric.fleet_versions()
    devices = "  ".join(f"{device} {models}" for device, models in sorted(versions.items()))
    line = f"devices: {devices or '-'}"
    if down:
        line += f"  (exited: {', '.join(down)})"
    pools = fabric.pool_totals()
    if pools:
        line += "\nrouted:  " + "  ".join(
            f"{key} {t.requests} req {t.errors} err p99 {t.last_p99_ms:.1f} ms"
            for key, t in sorted(pools.items())
        )
    return line
