"""Deadline-aware routing: a pure policy over pool snapshots, and route tables."""

from gateway.routing.policy import PoolSnapshot, Route, RoutingPlan, RoutingPolicy
from gateway.routing.table import parse_route, parse_routes

__all__ = ["PoolSnapshot", "Route", "RoutingPlan", "RoutingPolicy", "parse_route", "parse_routes"]
