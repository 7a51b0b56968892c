"""The fleet dashboard: a read-only web page served by ``edgefabric store serve --http-port``.

:mod:`.history` remembers the devices' and the gateways' recent reports (charts, timeline),
:mod:`.views` turns the store's objects into JSON, :mod:`.server` serves the page in
``static/`` and the API, :mod:`.auth` decides who may read it and where it may listen.
"""

from model_store.dashboard.auth import check_dashboard_exposure, require_admin
from model_store.dashboard.history import (
    EDGE_POOL,
    FleetHistory,
    TimelineEvent,
    decode_gateway_stats,
)
from model_store.dashboard.server import Authorize, DashboardData, DashboardServer, allow_all

__all__ = [
    "EDGE_POOL",
    "Authorize",
    "DashboardData",
    "DashboardServer",
    "FleetHistory",
    "TimelineEvent",
    "allow_all",
    "check_dashboard_exposure",
    "decode_gateway_stats",
    "require_admin",
]
