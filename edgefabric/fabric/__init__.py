"""A whole fabric on one machine: ``edgefabric up`` and the demo.

:mod:`.processes` starts the project's own commands as child processes, :mod:`.local` wires
broker, store, agents and gateway together, :mod:`.traffic` calls the gateway as an
application would and summarises what it saw, :mod:`.cli` is the ``edgefabric up`` command.
"""

from edgefabric.fabric.local import FabricOptions, LocalFabric
from edgefabric.fabric.traffic import TrafficSummary, send_requests

__all__ = ["FabricOptions", "LocalFabric", "TrafficSummary", "send_requests"]
