"""Route tables from settings: ``--route`` entries, or a TOML/JSON file.

A TARGET is ``POOL`` or ``POOL@VERSION``. On the command line, one model per entry::

    MODEL=TARGET[:WEIGHT][,TARGET[:WEIGHT]...][,*][;shadow=TARGET][;affinity=LABEL][;hedge[=WHEN]]

- ``mlp=local:0.9,edge-plant7:0.1;shadow=remote-triton;affinity=site``: 90% of mlp's
  requests to ``local``, 10% to ``edge-plant7`` (weights are relative), a copy of each to
  ``remote-triton``; requests whose ``site`` parameter names a pool's site go there first.
- ``mlp=local@1:0.95,local@2:0.05``: a canary between two versions on one pool.
- ``mlp=a,b;hedge``: only pools ``a`` and ``b``, best predicted first, with hedging: a copy
  goes to the other when the first has not answered after its recent p95. ``hedge=p99``
  picks the quantile, ``hedge=20ms`` a fixed delay.
- ``*`` adds every other pool that serves the model (each listed target then needs a
  weight); ``mlp=*;affinity=site`` changes nothing but the affinity.
- Listed targets without a weight, next to weighted ones, take requests only as failovers.

In a file, one table per model under ``routes`` (quote keys holding ``@`` or ``.``)::

    [routes.mlp]
    pools = ["local", "edge-plant7"]   # optional; absent: every pool serving mlp
    weights = { local = 0.9, edge-plant7 = 0.1 }
    shadow = "remote-triton"
    affinity = "site"
    hedge = true                       # or "p99", or "20ms"

JSON takes the same shape: ``{"routes": {"mlp": {"weights": {"local": 0.9, ...}}}}``.
"""

from __future__ import annotations

import json
import math
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path

from gateway.routing._types import Route

__all__ = ["format_route", "load_routes", "parse_route", "parse_routes", "routes_from_mapping"]

SYNTAX = (
    "MODEL=TARGET[:WEIGHT][,TARGET[:WEIGHT]...][,*][;shadow=TARGET][;affinity=LABEL]"
    "[;hedge[=pQUANTILE|=MSms]]"
)
HEDGE_SYNTAX = "hedge, hedge=pNN (a latency percentile, e.g. p95) or hedge=NNms (fixed delay)"
_FILE_KEYS = ("pools", "weights", "shadow", "affinity", "hedge")


def parse_route(text: str) -> Route:
    """One ``--route`` entry; a ValueError names what was expected."""
    head, *options = (part.strip() for part in text.split(";"))
    model, sep, targets_text = (part.strip() for part in head.partition("="))
    if not sep or not model or not targets_text or any(c.isspace() for c in model):
        raise ValueError(f"route {text!r}: expected {SYNTAX}")
    pools: list[str] = []
    weights: dict[str, float] = {}
    anywhere = False
    for item in (part.strip() for part in targets_text.split(",")):
        if item == "*":
            anywhere = True
            continue
        target, colon, weight = (part.strip() for part in item.partition(":"))
        if not target:
            raise ValueError(f"route {text!r}: empty target in {targets_text!r}; expected {SYNTAX}")
        pools.append(target)
        if colon:
            weights[target] = _weight(f"route {text!r}", target, weight)
    if anywhere and len(weights) != len(pools):
        raise ValueError(f"route {text!r}: next to '*', every listed target needs a :WEIGHT")
    shadow, affinity, hedge = _options(text, options)
    quantile, after_ms = _hedge(f"route {text!r}", hedge)
    return Route(
        model,
        () if anywhere else tuple(pools),
        weights,
        shadow,
        affinity,
        hedge is not None,
        quantile,
        after_ms,
    )


def parse_routes(entries: Iterable[str]) -> dict[str, Route]:
    """Every ``--route`` entry, by model; a model given twice is an error."""
    routes: dict[str, Route] = {}
    for entry in entries:
        route = parse_route(entry)
        if route.model in routes:
            raise ValueError(f"route for {route.model!r} is given twice: {entry!r}")
        routes[route.model] = route
    return routes


def format_route(route: Route) -> str:
    """The ``--route`` entry that :func:`parse_route` reads back as ``route``."""
    items = [f"{t}:{route.weights[t]!r}" if t in route.weights else t for t in route.targets()]
    parts = [f"{route.model}={','.join([*items, *([] if route.pools else ['*'])])}"]
    if route.shadow is not None:
        parts.append(f"shadow={route.shadow}")
    if route.affinity_label is not None:
        parts.append(f"affinity={route.affinity_label}")
    if route.hedge_quantile is not None:
        parts.append(f"hedge=p{route.hedge_quantile * 100:g}")
    elif route.hedge_after_ms is not None:
        parts.append(f"hedge={route.hedge_after_ms:g}ms")
    elif route.hedge:
        parts.append("hedge")
    return ";".join(parts)


def routes_from_mapping(table: Mapping[str, object]) -> dict[str, Route]:
    """Routes from the ``routes`` table of a settings file (model -> its options)."""
    return {model: _route_from_options(model, options) for model, options in table.items()}


def load_routes(path: Path) -> dict[str, Route]:
    """The ``routes`` table of a ``.toml`` or ``.json`` file."""
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix == ".toml":
            document: object = tomllib.loads(text)
        elif path.suffix == ".json":
            document = json.loads(text)
        else:
            raise ValueError(f"route file {path}: expected a .toml or .json file")
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"route file {path}: not valid {path.suffix[1:].upper()}: {exc}") from None
    routes = document.get("routes", {}) if isinstance(document, dict) else None
    if not isinstance(routes, dict):
        raise ValueError(f"route file {path}: expected a 'routes' table of model -> options")
    return routes_from_mapping(routes)


def _options(text: str, options: list[str]) -> tuple[str | None, str | None, str | None]:
    """shadow, affinity, and the hedge's value (``""`` for a bare ``hedge``, ``None``: off)."""
    found: dict[str, str] = {}
    for option in options:
        key, sep, value = (part.strip() for part in option.partition("="))
        if key in found:
            raise ValueError(f"route {text!r}: option {key!r} is given twice")
        if (key in ("shadow", "affinity") and value) or (key == "hedge" and (value or not sep)):
            found[key] = value
        else:
            raise ValueError(
                f"route {text!r}: option {option!r} is not one of shadow=TARGET, "
                f"affinity=LABEL, {HEDGE_SYNTAX}"
            )
    return found.get("shadow"), found.get("affinity"), found.get("hedge")


def _hedge(where: str, value: str | None) -> tuple[float | None, float | None]:
    """``(quantile, after_ms)`` of a hedge option's value; both ``None`` for a bare ``hedge``."""
    if not value:
        return None, None
    text = value.strip().lower()
    try:
        if text.startswith("p"):
            quantile = float(text[1:]) / 100
            if math.isfinite(quantile) and 0 < quantile <= 1:
                return quantile, None
        elif text.endswith("ms"):
            after_ms = float(text[:-2])
            if math.isfinite(after_ms) and after_ms > 0:
                return None, after_ms
    except ValueError:
        pass
    raise ValueError(
        f"{where}: hedge {value!r} is not understood; expected {HEDGE_SYNTAX}, "
        "with a percentile in (0, 100] or a delay above 0 ms"
    )


def _weight(where: str, target: str, value: object) -> float:
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            raise ValueError(f"{where}: weight {value!r} of {target!r} is not a number") from None
    elif isinstance(value, int | float) and not isinstance(value, bool):
        number = float(value)
    else:
        raise ValueError(f"{where}: weight of {target!r} must be a number, got {value!r}")
    if not math.isfinite(number) or number < 0:
        raise ValueError(f"{where}: weight of {target!r} must be a number >= 0, got {value!r}")
    return number


def _route_from_options(model: str, options: object) -> Route:
    where = f"route for {model!r}"
    if not isinstance(options, dict):
        raise ValueError(f"{where}: expected a table of {', '.join(_FILE_KEYS)}")
    unknown = sorted(set(options) - set(_FILE_KEYS))
    if unknown:
        raise ValueError(f"{where}: unknown key {unknown[0]!r}; expected {', '.join(_FILE_KEYS)}")
    pools = options.get("pools", [])
    if not isinstance(pools, list) or not all(isinstance(p, str) for p in pools):
        raise ValueError(f"{where}: 'pools' must be a list of targets, got {pools!r}")
    weights = options.get("weights", {})
    if not isinstance(weights, dict):
        raise ValueError(f"{where}: 'weights' must be a table of target -> weight")
    hedge = options.get("hedge", False)
    if not isinstance(hedge, bool | str):
        raise ValueError(f'{where}: \'hedge\' must be true, false, "pNN" or "NNms", got {hedge!r}')
    quantile, after_ms = _hedge(where, hedge) if isinstance(hedge, str) else (None, None)
    return Route(
        model,
        tuple(pools),
        {str(t): _weight(where, str(t), w) for t, w in weights.items()},
        _optional_str(where, options, "shadow"),
        _optional_str(where, options, "affinity"),
        hedge is not False,
        quantile,
        after_ms,
    )


def _optional_str(where: str, options: Mapping[str, object], key: str) -> str | None:
    value = options.get(key)
    if value is not None and not isinstance(value, str):
        raise ValueError(f"{where}: {key!r} must be a string, got {value!r}")
    return value
