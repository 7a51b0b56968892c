"""The fabric half of ``make demo``: store, broker, agents and gateway, a staged rollout, traffic.

Runs :class:`edgefabric.fabric.LocalFabric` (what ``edgefabric up`` runs) non-interactively:
pushes a real ONNX model (two versions with golden vectors) into a signed store, rolls version
1 out to the agents in stages, sends requests through the gateway that land on its own ONNX
Runtime session (``local``) and on the agents relayed over MQTT (``edge``), rolls version 2
out, sends requests again, and prints what each step saw.
"""

from __future__ import annotations

from pathlib import Path

from edgefabric.fabric import FabricOptions, LocalFabric, send_requests
from edgefabric.fabric.local import MODEL
from edgefabric.fabric.processes import run_command

__all__ = ["run_fabric_demo"]

REQUESTS = 200


def run_fabric_demo(work: Path, agents: int = 2) -> dict[str, int]:
    """Run the fabric demo in ``work``; returns each process's exit code."""
    with LocalFabric(FabricOptions(work_dir=work, agents=agents)) as fabric:
        print(f"[demo] private mosquitto {fabric.broker_url}, gateway {fabric.gateway_endpoint}")
        print(f"[demo] agents: {', '.join(fabric.devices)}; dashboard {fabric.dashboard_url}")
        for version in (1, 2):
            summary = fabric.rollout(version, stages="50%,100%")
            print(
                f"[demo] rollout of {MODEL}:{version} in stages 50%,100%: {summary['phase']} "
                f"({summary.get('devices', {})})"
            )
            for device, models in sorted(fabric.fleet_versions().items()):
                print(f"[demo]   {device} serves {models}")
            traffic = send_requests(fabric.gateway_endpoint, MODEL, REQUESTS)
            for line in traffic.lines():
                print(f"[demo]   {line}")
        print("[demo] audit log: " + run_command(fabric.home, "audit", "verify").strip())
        codes = fabric.stop()
    print("[demo] exit codes: " + ", ".join(f"{name} {code}" for name, code in codes.items()))
    return codes
