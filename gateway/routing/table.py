"""Route tables from settings: ``--route`` entries.

Syntax, one model per entry::

    MODEL=POOL[:WEIGHT][,POOL[:WEIGHT]...][;shadow=POOL][;affinity=LABEL][;hedge]

``mlp=local:0.9,edge:0.1;shadow=triton`` sends 90% of mlp to ``local``, 10% to ``edge``, and a
copy of every request to ``triton``. Pools listed without weights are allowed, best first.
"""

from __future__ import annotations

from collections.abc import Iterable

from gateway.routing.policy import Route

__all__ = ["parse_route", "parse_routes"]

_SYNTAX = "MODEL=POOL[:WEIGHT][,POOL[:WEIGHT]...][;shadow=POOL][;affinity=LABEL][;hedge]"


def parse_route(text: str) -> Route:
    """One ``--route`` entry; ValueError names what was expected."""
    head, *options = [part.strip() for part in text.split(";")]
    model, sep, pools_text = head.partition("=")
    if not sep or not model or not pools_text:
        raise ValueError(f"route {text!r}: expected {_SYNTAX}")
    pools: list[str] = []
    weights: dict[str, float] = {}
    for item in pools_text.split(","):
        name, _, weight = item.strip().partition(":")
        if not name:
            raise ValueError(f"route {text!r}: empty pool name; expected {_SYNTAX}")
        pools.append(name)
        if weight:
            try:
                weights[name] = float(weight)
            except ValueError:
                raise ValueError(f"route {text!r}: weight {weight!r} is not a number") from None
            if weights[name] < 0:
                raise ValueError(f"route {text!r}: weight of {name!r} is negative")
    shadow, affinity, hedge = None, None, False
    for option in options:
        key, _, value = option.partition("=")
        if key == "shadow" and value:
            shadow = value
        elif key == "affinity" and value:
            affinity = value
        elif key == "hedge" and not value:
            hedge = True
        else:
            raise ValueError(f"route {text!r}: unknown option {option!r}; expected {_SYNTAX}")
    return Route(model, tuple(pools), weights, shadow, affinity, hedge)


def parse_routes(entries: Iterable[str]) -> dict[str, Route]:
    """Every entry, by model (a model given twice is an error)."""
    routes: dict[str, Route] = {}
    for entry in entries:
        route = parse_route(entry)
        if route.model in routes:
            raise ValueError(f"route for {route.model!r} is given twice")
        routes[route.model] = route
    return routes
