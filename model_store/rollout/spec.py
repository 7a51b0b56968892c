"""What a rollout should do: which version, to which devices, in which stages, under which gates.

Operator text (the CLI's flags) parses into frozen values that print back the same way::

    parse_target("resnet:3")        -> ("resnet", 3)
    parse_selector("site=a,class=cam") -> {"site": "a", "class": "cam"}   ("" = every device)
    parse_stages("5%,25%,100%")     -> (0.05, 0.25, 1.0)    cumulative, increasing, ends at 100%
    parse_duration("10m")           -> 600.0                 "30s", "1h30m", "0"
    parse_percent("2%")             -> 0.02
    parse_rate("50/min")            -> 50                    new assignments per minute
    Gate.parse("p99_ms<40")         -> Gate(GateKind.P99_MS, 40.0); str() gives "p99_ms<40"

Bad text raises :class:`ValueError` saying what was expected, what arrived and an example.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from edgefabric.errors import InvalidModelError
from model_store.registry import check_model_name

__all__ = [
    "Gate",
    "GateKind",
    "RolloutSpec",
    "format_percent",
    "format_selector",
    "format_stages",
    "parse_duration",
    "parse_percent",
    "parse_rate",
    "parse_selector",
    "parse_stages",
    "parse_target",
]

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)([hms])")
_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0}
_RATE = re.compile(r"(\d+)\s*/\s*(min|s)")
_TARGET = re.compile(r"([^:\s]+):(\d+)")
_DURATION_HELP = "a number with a unit s, m or h, e.g. '30s', '10m' or '1h30m' (or '0')"


def _number(value: float) -> str:
    """``40.0`` as ``40``, ``0.01`` as ``0.01``: the shortest text that parses back the same."""
    if value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


def _float(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


class GateKind(StrEnum):
    """What a gate checks on each device of the cohort."""

    INSTALL = "install"  # the device installed the version (always checked; may be named)
    SELFTEST = "selftest"  # the golden-vector self-test passed
    ERROR_RATE = "error_rate"  # errors / requests below a fraction
    P99_MS = "p99_ms"  # p99 latency below a number of milliseconds


_THRESHOLD_HELP = {
    GateKind.ERROR_RATE: "a fraction between 0 and 1, e.g. 'error_rate<0.01'",
    GateKind.P99_MS: "milliseconds above 0, e.g. 'p99_ms<40'",
}
_GATE_HELP = "use 'install', 'selftest', 'error_rate<FRACTION' or 'p99_ms<MILLISECONDS'"


@dataclass(frozen=True)
class Gate:
    """One health gate: a check with no threshold, or a metric that must stay below one."""

    kind: GateKind
    threshold: float | None = None

    def __post_init__(self) -> None:
        if self.kind in _THRESHOLD_HELP:
            limit = self.threshold
            ok = limit is not None and math.isfinite(limit) and limit > 0
            if ok and self.kind is GateKind.ERROR_RATE:
                ok = limit is not None and limit <= 1
            if not ok:
                raise ValueError(
                    f"gate {self.kind}: threshold {limit!r} is not usable; "
                    f"expected {_THRESHOLD_HELP[self.kind]}"
                )
        elif self.threshold is not None:
            raise ValueError(f"gate {self.kind} takes no threshold, got {self.threshold!r}")

    @classmethod
    def parse(cls, text: str) -> Gate:
        """``selftest``, ``install``, ``error_rate<0.01`` or ``p99_ms<40``."""
        name, sep, value = text.strip().partition("<")
        name = name.strip()
        try:
            kind = GateKind(name)
        except ValueError:
            raise ValueError(f"unknown gate {text!r}: {_GATE_HELP}") from None
        if kind not in _THRESHOLD_HELP:
            if sep:
                raise ValueError(f"gate {text!r}: {kind} takes no threshold; write '{kind}'")
            return cls(kind)
        threshold = _float(value.strip()) if sep else None
        if threshold is None:
            raise ValueError(f"gate {text!r}: expected {_THRESHOLD_HELP[kind]}")
        return cls(kind, threshold)

    def __str__(self) -> str:
        if self.threshold is None:
            return str(self.kind)
        return f"{self.kind}<{_number(self.threshold)}"


def parse_target(text: str) -> tuple[str, int]:
    """``NAME:VERSION`` as ``(name, version)``."""
    found = _TARGET.fullmatch(text.strip())
    if found is None or int(found[2]) < 1:
        raise ValueError(
            f"target {text!r}: expected NAME:VERSION with a version of 1 or more, e.g. 'resnet:3'"
        )
    return found[1], int(found[2])


def parse_selector(text: str) -> dict[str, str]:
    """``key=value,...`` (every pair must match a device's labels); ``""`` selects every device."""
    selector: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = (s.strip() for s in item.partition("="))
        if not sep or not key or not value:
            raise ValueError(f"selector item {item!r}: expected key=value, e.g. 'site=plant-7'")
        if key in selector:
            raise ValueError(f"selector {text!r}: label {key!r} is given twice")
        selector[key] = value
    return selector


def format_selector(selector: Mapping[str, str]) -> str:
    """The selector as ``parse_selector`` reads it, keys sorted (``""`` for every device)."""
    return ",".join(f"{k}={selector[k]}" for k in sorted(selector))


def parse_percent(text: str) -> float:
    """``"2%"`` as ``0.02``; from 0% to 100%."""
    stripped = text.strip()
    value = _float(stripped[:-1]) if stripped.endswith("%") else None
    if stripped == "0":
        value = 0.0
    if value is None or not 0 <= value <= 100:
        raise ValueError(f"percentage {text!r}: expected 0% to 100%, e.g. '2%'")
    return value / 100


def format_percent(fraction: float) -> str:
    """``0.05`` as ``"5%"``."""
    return f"{_number(round(fraction * 100, 9))}%"


def parse_stages(text: str) -> tuple[float, ...]:
    """``"5%,25%,100%"`` as cumulative fractions, each above the one before, the last 100%."""
    parts = [part.strip() for part in text.split(",")]
    if not any(parts):
        raise ValueError(
            f"stages {text!r}: expected percentages separated by commas, ending at 100%, "
            "e.g. '5%,25%,100%'"
        )
    stages: list[float] = []
    for part in parts:
        value = _float(part[:-1]) if part.endswith("%") else None
        if value is None:
            raise ValueError(f"stage {part!r}: expected a percentage such as '25%'")
        if not 0 < value <= 100:
            raise ValueError(f"stage {part!r}: must be above 0% and at most 100%")
        if stages and value <= stages[-1] * 100:
            raise ValueError(
                f"stages {text!r}: each stage is the share of devices reached so far, so it "
                f"must grow: {part!r} follows {format_percent(stages[-1])!r}"
            )
        stages.append(value / 100)
    if stages[-1] != 1.0:
        raise ValueError(
            f"stages {text!r}: the last stage must be 100% so that every device is reached; "
            f"add ',100%'"
        )
    return tuple(stages)


def format_stages(stages: Iterable[float]) -> str:
    """``(0.05, 0.25, 1.0)`` as ``"5%,25%,100%"``."""
    return ",".join(format_percent(stage) for stage in stages)


def parse_duration(text: str) -> float:
    """``"10m"``, ``"30s"``, ``"1h30m"``, ``"0"`` as seconds."""
    stripped = text.strip().lower()
    if stripped == "0":
        return 0.0
    parts = list(_DURATION_PART.finditer(stripped))
    if not parts or "".join(p[0] for p in parts) != stripped:
        raise ValueError(f"duration {text!r}: expected {_DURATION_HELP}")
    return sum(float(p[1]) * _SECONDS[p[2]] for p in parts)


def parse_rate(text: str) -> int:
    """``"50/min"`` (or ``"2/s"``) as new assignments per minute."""
    found = _RATE.fullmatch(text.strip())
    per_min = int(found[1]) * (60 if found[2] == "s" else 1) if found else 0
    if per_min < 1:
        raise ValueError(
            f"rate {text!r}: expected a whole number of devices per minute "
            "(1 or more), e.g. '50/min' or '2/s'"
        )
    return per_min


@dataclass(frozen=True)
class RolloutSpec:
    """A rollout as the operator asked for it; validated on construction (``ValueError``)."""

    model: str
    version: int
    selector: Mapping[str, str]
    stages: tuple[float, ...]
    bake_s: float
    gates: tuple[Gate, ...]
    max_failures: float = 0.0
    rate_per_min: int | None = None
    canary: bool = True

    def __post_init__(self) -> None:
        try:
            check_model_name(self.model)
        except InvalidModelError as exc:
            raise ValueError(str(exc)) from None
        if self.version < 1:
            raise ValueError(f"{self.model}: version must be 1 or more, got {self.version}")
        for key, value in self.selector.items():
            if not key or not value:
                raise ValueError(f"selector {key!r}={value!r}: labels and values must not be empty")
        object.__setattr__(self, "selector", dict(sorted(self.selector.items())))
        # One set of rules and messages for stages however they were made.
        object.__setattr__(self, "stages", parse_stages(format_stages(self.stages)))
        if not (math.isfinite(self.bake_s) and self.bake_s >= 0):
            raise ValueError(f"bake time must be 0 seconds or more, got {self.bake_s!r}")
        if not 0 <= self.max_failures <= 1:
            raise ValueError(
                f"max_failures is a fraction from 0 to 1 (0% to 100%), got {self.max_failures!r}"
            )
        if self.rate_per_min is not None and self.rate_per_min < 1:
            raise ValueError(f"rate must be 1 device per minute or more, got {self.rate_per_min}")
        kinds = [gate.kind for gate in self.gates]
        for kind in set(kinds):
            if kinds.count(kind) > 1:
                raise ValueError(f"gate {kind} is given more than once; keep one")
        object.__setattr__(self, "gates", tuple(self.gates))

    @classmethod
    def parse(
        cls,
        target: str,
        *,
        selector: str = "",
        stages: str = "100%",
        bake: str = "0",
        gates: Iterable[str] = (),
        max_failures: str = "0%",
        rate: str | None = None,
        canary: bool = True,
    ) -> RolloutSpec:
        """A spec from the CLI's text, e.g. ``parse("resnet:3", stages="5%,100%")``."""
        model, version = parse_target(target)
        return cls(
            model=model,
            version=version,
            selector=parse_selector(selector),
            stages=parse_stages(stages),
            bake_s=parse_duration(bake),
            gates=tuple(Gate.parse(g) for g in gates),
            max_failures=parse_percent(max_failures),
            rate_per_min=None if rate is None else parse_rate(rate),
            canary=canary,
        )

    @property
    def ref(self) -> str:
        """``name:version``."""
        return f"{self.model}:{self.version}"

    def gate(self, kind: GateKind) -> Gate | None:
        """The gate of that kind, when the spec has one."""
        return next((gate for gate in self.gates if gate.kind is kind), None)

    def selects(self, labels: Mapping[str, str]) -> bool:
        """Whether a device with these labels is a target."""
        return all(labels.get(key) == value for key, value in self.selector.items())

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready form (gates and stages as the text the CLI takes)."""
        return {
            "model": self.model,
            "version": self.version,
            "selector": dict(self.selector),
            "stages": list(self.stages),
            "bake_s": self.bake_s,
            "gates": [str(gate) for gate in self.gates],
            "max_failures": self.max_failures,
            "rate_per_min": self.rate_per_min,
            "canary": self.canary,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RolloutSpec:
        """The inverse of :meth:`to_dict`."""
        return cls(
            model=str(data["model"]),
            version=int(data["version"]),
            selector={str(k): str(v) for k, v in dict(data["selector"]).items()},
            stages=tuple(float(s) for s in data["stages"]),
            bake_s=float(data["bake_s"]),
            gates=tuple(Gate.parse(str(g)) for g in data["gates"]),
            max_failures=float(data["max_failures"]),
            rate_per_min=None if data["rate_per_min"] is None else int(data["rate_per_min"]),
            canary=bool(data["canary"]),
        )
