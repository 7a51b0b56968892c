"""Deadline-aware routing: a pure policy over pool snapshots, and route tables from settings."""

from gateway.routing._types import PoolKind, PoolSnapshot, Route, split_target
from gateway.routing.policy import RoutingPlan, RoutingPolicy
from gateway.routing.swap import final_route, settled_route, swap_route
from gateway.routing.table import (
    format_route,
    load_routes,
    parse_route,
    parse_routes,
    routes_from_mapping,
)

__all__ = [
    "PoolKind",
    "PoolSnapshot",
    "Route",
    "RoutingPlan",
    "RoutingPolicy",
    "final_route",
    "format_route",
    "load_routes",
    "parse_route",
    "parse_routes",
    "routes_from_mapping",
    "settled_route",
    "split_target",
    "swap_route",
]
